"""A failed job's `error_kind` comes from the exception's type, not its text: the classifier's
table on stand-in classes (named like the real ones, raised in the modules that raise them),
on the real exceptions of the libraries it names, and end to end through a real worker on an
upload whose config.json names a `model_type` transformers does not know."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from service_helpers import FAST_JOB, auth, submit, wait_state

from jobs.records import ErrorKind
from worker.failures import classify


def _named(module: str, name: str, base: type[BaseException] = Exception) -> type:
    """A stand-in exception class whose module and name are those of a library's class."""
    return type(name, (base,), {"__module__": module})


def _raised_in(module: str, exc: BaseException, cause: BaseException | None = None,
               context: BaseException | None = None) -> BaseException:
    """`exc` as if code of `module` raised it (its traceback's innermost frame is there),
    from `cause`, or while handling `context` and hiding it (`from None`, as torch does)."""
    namespace = {"__name__": module, "exc": exc, "cause": cause, "context": context}
    code = ("try:\n    raise context\nexcept BaseException:\n    raise exc from None\n"
            if context else
            "raise exc from cause\n" if cause else "raise exc\n")
    try:
        exec(compile(code, f"<{module}>", "exec"), namespace)
    except BaseException as caught:  # what the table hands to the classifier
        return caught
    raise AssertionError("unreachable")


HUB_ADVICE = ("The checkpoint has model type `nosuchmodel` but Transformers does not recognize "
              "this architecture ... install from https://github.com/huggingface/transformers")

CASES: dict[str, tuple[BaseException, ErrorKind]] = {
    "rq timeout": (_named("rq.timeouts", "JobTimeoutException")("Task exceeded 10 s"),
                   ErrorKind.timeout),
    "torch OOM": (_named("torch", "OutOfMemoryError", RuntimeError)("CUDA out of memory"),
                  ErrorKind.out_of_memory),
    "host MemoryError": (MemoryError(), ErrorKind.out_of_memory),
    "does not fit": (_named("compressors.memory", "DoesNotFit", ValueError)("needs 80 GB"),
                     ErrorKind.out_of_memory),
    "policy": (PermissionError("evaluation.text: not under an allowed root"),
               ErrorKind.refused),
    "model file outside": (_named("compressors.io.model_files", "UnsafeModelFile",
                                  ValueError)("index names /etc/passwd"), ErrorKind.refused),
    "code in a pickle": (_raised_in("torch.serialization", pickle.UnpicklingError("Weights only"),
                                    context=_raised_in("torch._weights_only_unpickler",
                                                       pickle.UnpicklingError("global"))),
                         ErrorKind.refused),
    "hub offline": (_named("huggingface_hub.errors", "OfflineModeIsEnabled",
                           ConnectionError)("offline"), ErrorKind.offline),
    "hub file not cached": (_raised_in("transformers.utils.hub", OSError("couldn't connect")),
                            ErrorKind.offline),
    "damaged safetensors": (_named("compressors.io.model_files", "DamagedWeights",
                                   ValueError)("model.safetensors: header"),
                            ErrorKind.damaged_weights),
    "damaged, class moved": (_named("compressors.io.stream", "DamagedWeights",
                                    ValueError)("truncated"), ErrorKind.damaged_weights),
    "safetensors rust": (_named("safetensors._safetensors_rust", "SafetensorError")("header"),
                         ErrorKind.damaged_weights),
    "truncated .bin": (_raised_in("torch.serialization", RuntimeError("central directory")),
                       ErrorKind.damaged_weights),
    "unknown model_type": (_raised_in("transformers.models.auto.configuration_auto",
                                      ValueError(HUB_ADVICE),
                                      context=KeyError("nosuchmodel")),
                           ErrorKind.unsupported_model),
    "no auto class": (_raised_in("transformers.models.auto.auto_factory",
                                 ValueError("Unrecognized configuration class")),
                      ErrorKind.unsupported_model),
    "model not found": (_named("compressors.io.loading", "ModelNotFoundError",
                               ValueError)("never downloads from a model hub (offline)"),
                        ErrorKind.not_found),
    "text file missing": (FileNotFoundError("no file …/speech.txt"), ErrorKind.not_found),
    "goal out of reach": (_named("compressors.search.run", "GoalNotMet", RuntimeError)("no"),
                          ErrorKind.goal_not_met),
    "indefinite Hessian": (_named("compressors.ops.hessian", "CholeskyError",
                                  RuntimeError)("dampening"), ErrorKind.numerical),
    "recipe validation": (_named("pydantic_core._pydantic_core", "ValidationError",
                                 ValueError)("1 validation error"), ErrorKind.invalid_recipe),
    "recipe does not fit": (_raised_in("compressors.engine.modules",
                                       ValueError("include/exclude: no Linear-like layer")),
                            ErrorKind.invalid_recipe),
    "wrapped by the library": (_raised_in("compressors.pipeline", RuntimeError("step failed"),
                                          cause=MemoryError()), ErrorKind.out_of_memory),
    # The old dashboard's regexes read these as "no internet access" and "not found": a
    # message proves nothing, only where and what was raised does.
    "hub in a message": (ValueError(HUB_ADVICE), ErrorKind.internal),
    "not found in a message": (RuntimeError("key not found; offline"), ErrorKind.internal),
    "unknown": (KeyError("x"), ErrorKind.internal),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_classify_table(case):
    exc, kind = CASES[case]
    assert classify(exc) == kind


def test_a_cyclic_chain_ends():
    first, second = ValueError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert classify(first) == ErrorKind.internal


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_real_library_exceptions(tmp_path):
    """The classes the table names, as the libraries really raise them."""
    import importlib

    import torch
    from rq.timeouts import JobTimeoutException
    from safetensors import safe_open
    from transformers import AutoConfig

    from compressors.io.loading import ModelNotFoundError, resolve_model
    from compressors.recipe import parse_recipe

    def raised(call, *args, **kwargs) -> BaseException:
        with pytest.raises(BaseException) as caught:
            call(*args, **kwargs)
        return caught.value

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "nosuchmodel"}))
    untyped = tmp_path / "untyped"
    untyped.mkdir()
    (untyped / "config.json").write_text("{}")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps({"w": _RunsCode()}))
    truncated = tmp_path / "truncated.bin"
    torch.save({"w": torch.zeros(8)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    damaged = next(importlib.import_module(module).DamagedWeights
                   for module in ("compressors.io.model_files", "compressors.io.stream")
                   if hasattr(importlib.import_module(module), "DamagedWeights"))

    local = {"local_files_only": True, "trust_remote_code": False}
    expected = {
        ErrorKind.unsupported_model: [raised(AutoConfig.from_pretrained, unknown, **local),
                                      raised(AutoConfig.from_pretrained, untyped, **local)],
        ErrorKind.damaged_weights: [raised(safe_open, str(junk), "pt"),
                                    raised(torch.load, truncated, weights_only=True),
                                    damaged("model.safetensors: truncated")],
        ErrorKind.refused: [raised(torch.load, evil, weights_only=True)],
        ErrorKind.out_of_memory: [torch.OutOfMemoryError("CUDA out of memory")],
        ErrorKind.not_found: [raised(resolve_model, "meta-llama/Llama-3-8B")],
        ErrorKind.invalid_recipe: [raised(parse_recipe, {"steps": [{"method": "magnitude",
                                                                    "sparsity": 5}]})],
        ErrorKind.timeout: [JobTimeoutException("Task exceeded maximum timeout value")],
    }
    assert isinstance(expected[ErrorKind.not_found][0], ModelNotFoundError)
    got = {kind: [classify(exc) for exc in excs] for kind, excs in expected.items()}
    assert got == {kind: [kind] * len(excs) for kind, excs in expected.items()}


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


def test_classifier_is_torch_free():
    """The worker's parent imports it: it must not import torch (nor the library's loaders)."""
    code = ("import sys, worker.failures; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_lost_worker_with_no_retries_left_is_worker_lost(settings, redis, monkeypatch):
    """The final failure RQ reports for a dead job process carries its kind."""
    from jobs.records import JobRecord, JobState, JobUpdate
    from jobs.settings import get_settings
    from jobs.store import JobStore
    from worker.tasks import record_lost_worker

    for name, value in settings.model_dump().items():
        if value is not None:
            monkeypatch.setenv(f"COMPRESSORS_{name.upper()}", str(value))
    get_settings.cache_clear()
    try:
        store = JobStore(redis, settings.key_prefix)
        record = JobRecord.submitted("kinds", "", "tiny", "tiny", {"steps": []}, 1)
        store.create(record)
        store.update(record.id, JobUpdate(state=JobState.running, attempt=1))
        record_lost_worker(record.id, False, "job process died")
        after = store.get(record.id)
        assert after.state == JobState.failed and after.error_kind == ErrorKind.worker_lost
        assert after.error == "job process died"
        store.delete(after)
    finally:
        get_settings.cache_clear()


def _tar_folder(folder: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return buffer.getvalue()


def test_unknown_model_type_fails_as_unsupported_not_offline(client, keys, workers, tmp_path):
    """The reported case: the dashboard said "no internet access" for an unknown model_type."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "exotic"
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    written = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**written, "model_type": "nosuchmodel"}))
    key = keys["bob"]
    uploaded = client.post("/api/v1/models?name=exotic", headers=auth(key),
                           content=_tar_folder(folder, "exotic"))
    assert uploaded.status_code == 201, uploaded.text
    try:
        workers.start()
        job = submit(client, key, model="exotic", recipe=FAST_JOB, name="unknown model_type")
        record = wait_state(client, key, job["id"], ("failed", "succeeded"))
        assert record["state"] == "failed", record
        assert record["error_kind"] == "unsupported_model", record["error"]
        assert "nosuchmodel" in record["error"]  # the worker's own words stay beside it
        assert record["attempt"] == 1
        client.delete(f"/api/v1/jobs/{job['id']}", headers=auth(key))
    finally:
        client.delete("/api/v1/models/exotic", headers=auth(key))
