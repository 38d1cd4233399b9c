"""The jobs table at laptop width, and a failure explained from its kind, in a real browser.

At 1280 px the "Created" and "Elapsed" headers once drew on top of each other (Owner and
Created had no width left and collapsed to 0 px): every header cell must have its own box, side
by side, with its whole label inside it. The row used is a job on an uploaded model whose
config.json names an unknown `model_type`, which the dashboard once explained as "no internet
access"; its banner must now come from the record's `error_kind`.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.timeout(600)]

LAPTOP = {"width": 1280, "height": 900}
FAST = {"steps": [{"method": "magnitude", "sparsity": 0.5}],
        "calibration": {"samples": 2, "seqlen": 32}, "evaluation": {"windows": 2, "seqlen": 32}}


def _exotic_archive(folder: Path) -> bytes:
    """A tiny Llama whose config.json says `"model_type": "nosuchmodel"`, as a tar.gz."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    written = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**written, "model_type": "nosuchmodel"}))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="exotic")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def failed_job(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The id of alice's job on the exotic model, once the worker has failed it."""
    api = stack.client("alice")
    body = _exotic_archive(tmp_path_factory.mktemp("exotic"))
    uploaded = api.post("/models", params={"name": "layout-exotic"}, content=body)
    assert uploaded.status_code == 201, uploaded.text
    created = api.post("/jobs", json={"model": "layout-exotic", "name": "exotic model type",
                                      "recipe": FAST})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 300
    while (record := api.get(f"/jobs/{job_id}").json())["state"] not in ("failed", "succeeded"):
        assert time.monotonic() < deadline, stack.log_tail("worker")
        time.sleep(0.5)
    assert record["state"] == "failed", record
    yield job_id
    api.delete(f"/jobs/{job_id}")
    api.delete("/models/layout-exotic")


@pytest.fixture(scope="module")
def page(browser: Any, stack: Any) -> Iterator[Any]:
    """A signed-in page of alice at 1280 x 900."""
    context = browser.new_context(viewport=LAPTOP, bypass_csp=True)
    signed_in = context.new_page()
    signed_in.goto(stack.base_url + "/signin")
    signed_in.fill("#api_key", stack.keys["alice"])
    signed_in.press("#api_key", "Enter")
    signed_in.wait_for_url(stack.base_url + "/")
    yield signed_in
    context.close()


def _ready(page: Any) -> None:
    page.wait_for_function("window.dashboard && window.dashboard.ready === true")


def test_failure_banner_comes_from_the_error_kind(page: Any, stack: Any, failed_job: str,
                                                 screenshots: Path) -> None:
    record = stack.client("alice").get(f"/jobs/{failed_job}").json()
    assert record["error_kind"] == "unsupported_model", record["error"]
    page.goto(f"{stack.base_url}/jobs/{failed_job}")
    _ready(page)
    box = page.locator("#job-failure .error-box")
    box.wait_for()
    text = box.inner_text()
    assert "architecture is not supported" in text
    assert "internet" not in text  # what the message-matching regexes once said
    assert "nosuchmodel" in text  # the worker's own words stay below the headline
    page.screenshot(path=str(screenshots / "20-job-failed-unsupported.png"), full_page=True)


def test_jobs_table_headers_do_not_overlap_at_1280(page: Any, stack: Any, failed_job: str,
                                                   screenshots: Path) -> None:
    page.goto(stack.base_url + "/")
    _ready(page)
    page.wait_for_selector(f"tr[data-job-id='{failed_job}']")
    boxes = page.eval_on_selector_all(
        "#jobs-table thead th",
        "ths => ths.map(th => { const b = th.getBoundingClientRect();"
        " return {label: th.textContent, left: b.left, right: b.right,"
        " clipped: th.scrollWidth > th.clientWidth}; })")
    labels = [b["label"] for b in boxes]
    assert "Created (UTC)" in labels and "Elapsed" in labels
    for box in boxes:
        assert box["right"] - box["left"] > 0, box
        assert not box["clipped"], box  # the whole label fits its cell
    for left, right in itertools.pairwise(boxes):
        assert left["right"] <= right["left"] + 0.5, (left, right)  # side by side, no overlap
    row = page.locator(f"tr[data-job-id='{failed_job}']")
    assert row.locator("td.c-stage").inner_text() == "unsupported model"  # the kind, short
    created = row.locator("td.c-created")
    assert created.evaluate("td => td.scrollWidth <= td.clientWidth")  # the date is not cut
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.screenshot(path=str(screenshots / "21-jobs-1280.png"), full_page=True)
