"""The jobs core on its own: package boundaries, the one binding of RQ task names to the
worker's functions, and the typed records in their store on the real Redis."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]


def _imported(package: str) -> list[tuple[str, str]]:
    """(module file, imported module) for every import in a package, wherever it appears."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append((path.name, node.module))
    return found


@pytest.mark.parametrize("package,forbidden", [("jobs", {"service", "worker"}),
                                               ("worker", {"service"})])
def test_packages_import_only_downward(package, forbidden):
    """jobs/ knows neither side above it, and the worker never imports the API."""
    upward = [(f, m) for f, m in _imported(package) if m.split(".")[0] in forbidden]
    assert upward == []


def test_rq_task_names_resolve_to_the_worker_functions():
    """The only place the queue names the worker: RQ imports these names in the work horse."""
    from rq.utils import import_attribute

    from jobs.queue import ON_FAILURE, TASK
    from worker import tasks
    from worker.runner import check_task_names

    assert import_attribute(TASK) is tasks.run_job
    assert import_attribute(ON_FAILURE) is tasks.on_rq_failure
    check_task_names()  # what `python -m worker` runs before it takes a job


def test_job_stages_are_the_library_stages():
    from compressors.progress import STAGES
    from jobs.records import JobStage

    assert get_args(JobStage) == STAGES


def test_a_partial_update_names_real_fields_only():
    from jobs.records import JobUpdate

    with pytest.raises(ValidationError):
        JobUpdate(stgae="loading")
    with pytest.raises(ValidationError):
        JobUpdate(stage="sleeping")
    assert set(JobUpdate(progress=0.5).fields()) == {"progress", "updated_at"}


def test_metrics_summary_from_the_typed_report_and_from_its_json():
    """The worker summarises what `compress` returned, or a report a past attempt wrote."""
    from compressors.report.schema import CompressionReport
    from jobs.records import JobMetrics

    side = {"parameters": 10, "nonzero_parameters": 10, "footprint_bytes": 40, "seqlen": 128}
    report = CompressionReport.model_validate({
        "base_model": "tiny", "recipe": {}, "steps": [], "device": "cpu", "versions": {},
        "metrics": {"before": {**side, "perplexity": 20.5},
                    "after": {**side, "perplexity": 25.0, "nonzero_parameters": 5}},
        "sparsity": {"total": 0.5, "model": 0.4}, "peak_memory_bytes": 1, "seconds_total": 3.0,
        "checkpoint": {"format": "hf", "needs_compressors_load": False, "how_to_load": "..."},
    })
    metrics = JobMetrics.from_report(report)
    assert metrics.after.nonzero_parameters == 5 and metrics.before.perplexity == 20.5
    assert (metrics.sparsity, metrics.model_sparsity, metrics.seconds_total) == (0.5, 0.4, 3.0)
    assert JobMetrics.from_report(report.to_json()) == metrics


@pytest.fixture
def store(redis, settings):
    from jobs.store import JobStore

    return JobStore(redis, settings.key_prefix)


@pytest.fixture
def record(store, token):
    from jobs.records import JobRecord

    created = JobRecord.submitted(f"core-{token}", "core", "tiny", "/srv/models/tiny",
                                  {"steps": [{"method": "magnitude", "sparsity": 0.5}]}, 3)
    store.create(created)
    yield created
    store.delete(created)


def test_store_round_trips_records_and_guards_updates(store, record):
    from jobs.records import ACTIVE, JobState, JobUpdate

    assert store.get(record.id) == record
    running = store.update(record.id, JobUpdate(state=JobState.running, attempt=1),
                           if_state=ACTIVE)
    assert running.state == JobState.running and running.attempt == 1
    assert running.updated_at >= record.updated_at
    assert store.update(record.id, JobUpdate(progress=0.5), if_state=(JobState.queued,)) is None
    assert store.update(record.id, JobUpdate(progress=0.5), if_attempt=2) is None
    assert store.update(record.id, JobUpdate(progress=0.5), if_attempt=1).progress == 0.5
    assert store.update("no-such-job", JobUpdate(progress=0.5)) is None


def test_an_older_record_still_loads_and_its_view_hides_the_path(store, record, redis):
    """Records outlive versions: unknown fields are ignored, and clients never see paths."""
    from jobs.records import JobView

    redis.hset(store.keys.job(record.id), "retired_field", json.dumps("from an old version"))
    loaded = store.get(record.id)
    assert loaded is not None and loaded.model_path == "/srv/models/tiny"
    view = json.loads(JobView.of(loaded).model_dump_json())
    assert "model_path" not in view and "retired_field" not in view
    assert "/srv" not in json.dumps(view)
    assert view["links"]["self"] == f"/api/v1/jobs/{record.id}"


def test_the_record_keeps_its_history_bounded_and_without_repeats(store, record):
    """Stage and message changes are kept in the record (the dashboard draws late-opened pages
    from them): a heartbeat that repeats the same state adds nothing; the last 60 are kept."""
    from jobs.records import JobState, JobUpdate
    from jobs.store import MAX_HISTORY

    store.update(record.id, JobUpdate(state=JobState.running, stage="loading", attempt=1,
                                      message="attempt 1 started"))
    for _ in range(3):  # the heartbeat: same stage and message, only updated_at moves
        store.update(record.id, JobUpdate(stage="loading", progress=0.0,
                                          message="attempt 1 started"))
    kept = store.get(record.id).history
    assert [(h.state, h.stage, h.message) for h in kept] == [
        (JobState.queued, None, "queued"), (JobState.running, "loading", "attempt 1 started")]
    for block in range(MAX_HISTORY + 10):
        store.update(record.id, JobUpdate(stage="compressing", message=f"block {block}"))
    done = store.update(record.id, JobUpdate(state=JobState.succeeded, message="done"))
    assert len(done.history) == MAX_HISTORY
    assert done.history[-1].state == JobState.succeeded and done.history[-1].message == "done"
    assert done.history[-2].message == f"block {MAX_HISTORY + 9}"
    stamps = [h.at for h in done.history]
    assert stamps == sorted(stamps)
