"""The dashboard in a real browser against the real service, worker and Redis.

One user flow, in order (later tests use what earlier ones made): sign in, submit a Wanda job on
the real SmolLM2 through the form, watch the jobs table reach done without reloading, check the
report page against the API, download the artifact and a file, cancel a second job, upload and
delete a model, look at the workers, check another key sees none of it, sign out. Every page is
saved as a screenshot in `test-output/screenshots/`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SMALL_BUDGETS

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1500)]

LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
JOB_SECONDS = 900  # generous wait for the real-model job on a shared 2-core CPU


@pytest.fixture(scope="module")
def flow() -> dict[str, Any]:
    """What one step of the flow hands to the next (job ids, the page's update log)."""
    return {}


@pytest.fixture(scope="module")
def alice(browser: Any, stack: Any) -> Iterator[Any]:
    """A browser context (its own cookie jar) for the key `alice`, recording every URL."""
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the pages' CSP
    # forbids; test_pages_work_under_csp checks the pages themselves under the real CSP.
    context = browser.new_context(viewport=LAPTOP, accept_downloads=True, bypass_csp=True)
    context.requested_urls = []
    context.on("request", lambda request: context.requested_urls.append(request.url))
    yield context
    context.close()


def shot(page: Any, folder: Path, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


def assert_fits_width(page: Any) -> None:
    """Nothing makes the page scroll sideways (tables may scroll inside their own box)."""
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than the viewport"


def wait_ready(page: Any) -> None:
    page.wait_for_function("window.dashboard && window.dashboard.ready === true")


def sign_in(page: Any, base_url: str, key: str) -> None:
    page.goto(base_url + "/")
    page.wait_for_url(re.compile(r"/signin"))
    page.fill("#api_key", key)
    page.press("#api_key", "Enter")
    page.wait_for_url(base_url + "/")
    wait_ready(page)


def test_sign_in_sets_httponly_cookie(alice: Any, stack: Any, screenshots: Path) -> None:
    page = alice.new_page()
    page.goto(stack.base_url + "/workers")
    assert "/signin?next=/workers" in page.url  # signed out: pages send you to sign in
    shot(page, screenshots, "01-signin")

    page.fill("#api_key", "ck_not-a-real-key")
    page.click("button[type=submit]")
    assert page.locator("#signin-error").is_visible()
    assert "not valid" in page.inner_text("#signin-error")
    shot(page, screenshots, "02-signin-error")

    sign_in(page, stack.base_url, stack.keys["alice"])
    cookies = {c["name"]: c for c in alice.cookies()}
    assert cookies["compressors_key"]["httpOnly"] is True
    assert cookies["compressors_key"]["sameSite"] == "Strict"
    assert cookies["compressors_key"]["value"] == stack.keys["alice"]
    assert page.evaluate("document.cookie") == ""  # invisible to scripts
    assert page.inner_text("#whoami").startswith("alice")
    page.close()


def test_submit_form_validates_and_submits(alice: Any, stack: Any, screenshots: Path,
                                           flow: dict[str, Any]) -> None:
    page = alice.new_page()
    page.goto(stack.base_url + "/submit")
    wait_ready(page)
    methods = stack.client("alice").get("/methods").json()["methods"]
    options = page.eval_on_selector_all("#add-method option", "os => os.map(o => o.value)")
    assert options == list(methods)  # the form is built from /api/v1/methods

    # Replace the default first step with a Wanda step, chosen from the list.
    page.click("#steps .step-card button:has-text('Remove')")
    assert page.locator("#steps .step-card").count() == 0
    page.select_option("#add-method", "wanda")
    page.click("#add-step")
    card = page.locator("#steps .step-card").first
    assert card.get_attribute("data-method") == "wanda"
    sparsity = card.locator("[data-field=sparsity]")
    hint = card.locator(".hint", has_text="range").first.inner_text()
    assert "< 1" in hint  # the schema's range is shown next to the field
    assert card.locator("[data-field=pattern]").input_value() == "unstructured"  # default

    page.select_option("#job-model", "smollm2-135m")
    page.fill("#job-name", "dash-wanda")
    budgets = SMALL_BUDGETS
    page.fill("#calibration-samples", str(budgets["calibration"]["samples"]))
    page.fill("#calibration-seqlen", str(budgets["calibration"]["seqlen"]))
    page.fill("#evaluation-windows", str(budgets["evaluation"]["windows"]))
    page.fill("#evaluation-seqlen", str(budgets["evaluation"]["seqlen"]))

    # Out of range: caught in the page, message next to the field, nothing sent.
    sparsity.fill("1.5")
    page.click("#submit-job")
    field_error = card.locator("[id$='-sparsity-error']")
    assert "< 1" in field_error.inner_text()
    assert sparsity.get_attribute("aria-invalid") == "true"
    assert page.url.endswith("/submit")

    # Valid per field but inconsistent: the server's 422 lands next to the sparsity field.
    sparsity.fill("0.3")
    card.locator("[data-field=pattern]").fill("2:4")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/jobs")) as answer:
        page.click("#submit-job")
    assert answer.value.status == 422
    page.wait_for_function(
        "document.querySelector('[id$=\"-sparsity-error\"]').textContent.includes('implies')")
    assert sparsity.get_attribute("aria-invalid") == "true"
    shot(page, screenshots, "03-submit-validation-error")

    # Fix it and check the JSON preview is exactly what gets sent.
    card.locator("[data-field=pattern]").fill("unstructured")
    sparsity.fill("0.5")
    preview = json.loads(page.inner_text("#json-preview"))
    assert preview["model"] == "smollm2-135m"
    assert preview["recipe"]["steps"] == [{"method": "wanda", "sparsity": 0.5,
                                           "pattern": "unstructured", "include": None,
                                           "exclude": None, "layer_sparsity": None}]
    assert preview["recipe"]["calibration"] == {
        "samples": budgets["calibration"]["samples"], "seqlen": budgets["calibration"]["seqlen"]}
    shot(page, screenshots, "04-submit")
    with page.expect_request(lambda r: r.url.endswith("/api/v1/jobs")
                             and r.method == "POST") as sent:
        page.click("#submit-job")
    assert json.loads(sent.value.post_data) == preview
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    flow["job1"] = page.url.rsplit("/", 1)[-1]
    # Keep the job's own page open: the next test checks it followed the job live.
    wait_ready(page)
    flow["detail_navigations"] = []
    page.on("framenavigated", lambda frame: flow["detail_navigations"].append(frame.url))
    flow["detail_page"] = page


def test_jobs_table_goes_live_to_done(alice: Any, stack: Any, screenshots: Path,
                                      flow: dict[str, Any]) -> None:
    job_id = flow["job1"]
    page = alice.new_page()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(stack.base_url + "/")
    wait_ready(page)
    row = page.locator(f"tr[data-job-id='{job_id}']")
    assert row.locator("a").inner_text() == "dash-wanda"
    assert "wanda" in row.inner_text()
    page.wait_for_function(
        "(id) => window.dashboard.updates.some(u => u.id === id && u.state === 'running'"
        " && u.progress >= 0.3)",
        arg=job_id, timeout=JOB_SECONDS * 1000)
    shot(page, screenshots, "05-jobs-running")
    geometry = ("(id) => { const r = document.querySelector(`tr[data-job-id='${id}']`);"
                " return [...r.cells].map(c => { const b = c.getBoundingClientRect();"
                " return [Math.round(b.x), Math.round(b.width), Math.round(b.height)]; }); }")
    while_running = page.evaluate(geometry, job_id)
    page.set_viewport_size(PHONE)
    assert_fits_width(page)
    shot(page, screenshots, "06-jobs-phone")
    page.set_viewport_size(LAPTOP)
    page.wait_for_function(
        "(id) => { const r = document.querySelector(`tr[data-job-id='${id}']`);"
        " return r && ['succeeded', 'failed', 'cancelled'].includes(r.dataset.state); }",
        arg=job_id, timeout=JOB_SECONDS * 1000)
    assert row.get_attribute("data-state") == "succeeded", stack.log_tail("worker")
    progress = row.locator(".progress")
    assert progress.get_attribute("aria-valuenow") == "100"
    assert row.locator(".pct").inner_text() == "100%"
    assert navigations == [stack.base_url + "/"]  # never reloaded: it all came over SSE
    assert page.evaluate(geometry, job_id) == while_running  # no layout jump as it updates

    updates = page.evaluate("(id) => window.dashboard.updates.filter(u => u.id === id)",
                            job_id)
    opened = page.evaluate("window.dashboard.streamOpenedAt")
    live = [u for u in updates if u["recordedAt"] and u["recordedAt"] >= opened]
    progress_values = {u["progress"] for u in live if u["state"] == "running"}
    stages = {u["stage"] for u in live if u["state"] == "running"}
    assert len(progress_values) >= 3, progress_values  # the bar moved in steps, live
    assert {"evaluating", "saving"} <= stages, stages
    # The bar: each update the worker recorded reached the page within 2 s (same clock).
    lags = [u["receivedAt"] - u["recordedAt"] for u in live]
    assert max(lags) < 2000, sorted(lags)[-5:]
    flow["lags_ms"] = lags
    # The job page opened at submit time followed it live: timeline, messages, report.
    detail = flow.pop("detail_page")
    detail.wait_for_selector("#report-section:not([hidden])")
    assert flow["detail_navigations"] == []
    assert detail.inner_text("#job-state") == "succeeded"
    timed = detail.eval_on_selector_all(
        "#timeline li", "lis => lis.filter(li => li.querySelector('time').textContent)"
        ".map(li => li.dataset.stage)")
    assert {"queued", "loading", "evaluating", "saving", "succeeded"} <= set(timed), timed
    assert timed[-1] == "succeeded"
    assert detail.locator("#timeline li.done").count() == detail.locator("#timeline li").count()
    assert detail.locator("#messages li").count() >= 3
    shot(detail, screenshots, "07a-job-detail-followed-live")
    detail.close()

    page.select_option("#state-filter", "failed")
    assert row.count() == 0
    assert "state=failed" in page.url
    page.select_option("#state-filter", "succeeded")
    assert row.count() == 1
    shot(page, screenshots, "07-jobs-done")
    page.close()


def test_job_detail_report_matches_api(alice: Any, stack: Any, screenshots: Path,
                                       flow: dict[str, Any], tmp_path: Path) -> None:
    job_id = flow["job1"]
    api = stack.client("alice")
    report = api.get(f"/jobs/{job_id}/report").json()
    files = api.get(f"/jobs/{job_id}/files").json()["files"]
    page = alice.new_page()
    page.goto(stack.base_url + "/")
    wait_ready(page)
    page.click(f"tr[data-job-id='{job_id}'] a")
    page.wait_for_url(f"{stack.base_url}/jobs/{job_id}")
    page.wait_for_selector("#report-section:not([hidden])")
    page.wait_for_selector("#files-section:not([hidden])")
    assert page.inner_text("#job-state") == "succeeded"
    # Opened after the end, the page still draws the whole story, from the record's history,
    # each message at the time the job said it; dates are ISO.
    record = api.get(f"/jobs/{job_id}").json()
    stages = page.locator("#timeline li").evaluate_all("els => els.map(e => e.dataset.stage)")
    assert stages[0] == "queued" and stages[-1] == "succeeded" and "loading" in stages
    messages = page.locator("#messages li").all_inner_texts()
    assert len(messages) >= 3
    assert messages[0] == f"{record['history'][0]['at'][11:19]}  queued"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC",
                        page.inner_text("[data-fact=created]"))

    for metric in ("perplexity", "parameters", "nonzero_parameters", "size_bytes", "latency_ms"):
        cells = page.locator(f"#report-table tr[data-metric={metric}] td")
        for column, when in ((0, "before"), (1, "after")):
            shown = cells.nth(column).get_attribute("data-raw")
            expected = report["metrics"][when].get(metric)
            if expected is None:
                assert shown == ""
            else:
                assert math.isclose(float(shown), float(expected), rel_tol=1e-9), metric
    ppl_after = report["metrics"]["after"]["perplexity"]
    assert f"{ppl_after:,.3f}" in page.inner_text("#report-table tr[data-metric=perplexity]")
    nonzero = page.inner_text("#report-table tr[data-metric=nonzero_parameters]")
    assert f"{report['metrics']['after']['nonzero_parameters']:,}" in nonzero

    per_layer = report["sparsity"]["per_layer"]
    figure = page.locator("#charts figure[data-chart=sparsity]")
    assert figure.count() == 1 and len(per_layer) > 0
    assert figure.locator("details tbody tr").count() == len(per_layer)  # every layer, by name
    if len(set(per_layer.values())) == 1:  # Wanda prunes each row alike: one line, no bars
        summary = figure.locator(".chart-summary").inner_text()
        assert f"({len(per_layer)} of them)" in summary and "sparsity 0.5" in summary
        assert figure.locator("svg").count() == 0
    else:
        bars = figure.locator("svg rect.bar-rect")
        assert bars.count() == len(per_layer)
        assert next(iter(per_layer)) in bars.first.locator("title").text_content()
    assert page.locator("#steps-table tbody tr").count() == len(report["steps"])

    listed = page.locator("#files-list li a")
    assert sorted(listed.all_inner_texts()) == sorted(f["path"] for f in files)
    shot(page, screenshots, "08-job-detail")
    page.set_viewport_size(PHONE)
    assert_fits_width(page)
    shot(page, screenshots, "09-job-detail-phone")
    page.set_viewport_size(LAPTOP)

    with page.expect_download() as download_info:
        page.click("#artifact-link")
    tar_path = tmp_path / "artifact.tar"
    download_info.value.save_as(tar_path)
    with tarfile.open(tar_path) as tar:
        names = {Path(n).name for n in tar.getnames()}
        assert {"config.json", "compression_report.json"} <= names
        member = next(m for m in tar.getmembers() if m.name.endswith("compression_report.json"))
        assert json.load(tar.extractfile(member)) == report

    with page.expect_download() as download_info:
        page.click("#files-list li a:text-is('config.json')")
    config_path = tmp_path / "config.json"
    download_info.value.save_as(config_path)
    assert json.loads(config_path.read_text())["model_type"] == "llama"
    page.close()


def test_cancel_second_job(alice: Any, stack: Any, screenshots: Path,
                           flow: dict[str, Any]) -> None:
    api = stack.client("alice")
    # Full-protocol budgets: slow enough on CPU that it is still active when cancelled.
    created = api.post("/jobs", json={"model": "smollm2-135m", "name": "dash-to-cancel",
                                      "recipe": {"steps": [{"method": "wanda",
                                                            "sparsity": 0.5}]}})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    flow["job2"] = job_id
    page = alice.new_page()
    page.goto(f"{stack.base_url}/jobs/{job_id}")
    wait_ready(page)
    assert page.locator("#cancel-job").is_visible()
    assert page.locator("#delete-job").is_hidden()
    page.click("#cancel-job")
    page.wait_for_function("document.querySelector('#job-state').textContent === 'cancelled'")
    assert api.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
    assert page.locator("#delete-job").is_visible()
    assert "cancelled" in page.inner_text("#job-failure")
    shot(page, screenshots, "10-job-cancelled")

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#delete-job")
    page.wait_for_url(stack.base_url + "/")
    assert api.get(f"/jobs/{job_id}").status_code == 404
    page.close()


def test_models_upload_and_delete(alice: Any, stack: Any, screenshots: Path,
                                  tiny_llama_folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_llama_folder, arcname="tiny-llama")
    page = alice.new_page()
    page.goto(stack.base_url + "/models")
    wait_ready(page)
    assert page.locator("tr[data-model='smollm2-135m']").count() == 1
    page.fill("#model-name", "dash-tiny")
    page.set_input_files("#model-file", str(archive))
    page.click("#upload-button")
    page.wait_for_selector("tr[data-model='dash-tiny']")
    assert page.locator("#upload-progress").get_attribute("aria-valuenow") == "100"
    assert "Uploaded dash-tiny" in page.inner_text("#upload-status")
    names = [m["name"] for m in stack.client("alice").get("/models").json()["models"]]
    assert "dash-tiny" in names
    shot(page, screenshots, "11-models")

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("tr[data-model='dash-tiny'] button:has-text('Delete')")
    page.wait_for_selector("tr[data-model='dash-tiny']", state="detached")
    names = [m["name"] for m in stack.client("alice").get("/models").json()["models"]]
    assert "dash-tiny" not in names
    page.close()


def test_failed_job_explained(alice: Any, stack: Any, screenshots: Path,
                              tiny_llama_folder: Path, tmp_path: Path) -> None:
    """A job whose model transformers cannot build (an unknown `model_type`: damaged weights
    are refused at upload now) fails; the page says why in plain words, not "no internet"."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (broken / name).write_bytes((tiny_llama_folder / name).read_bytes())
    config = json.loads((tiny_llama_folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    archive = tmp_path / "broken.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(broken, arcname="broken")
    api = stack.client("alice")
    uploaded = api.post("/models", params={"name": "dash-broken"},
                        content=archive.read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    created = api.post("/jobs", json={"model": "dash-broken", "name": "dash-broken-job",
                                      "recipe": {"steps": [{"method": "magnitude",
                                                            "sparsity": 0.5}],
                                                 **SMALL_BUDGETS}})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    page = alice.new_page()
    page.goto(f"{stack.base_url}/jobs/{job_id}")
    wait_ready(page)
    page.wait_for_function(
        "['failed', 'succeeded'].includes(document.querySelector('#job-state').textContent)",
        timeout=JOB_SECONDS * 1000)
    record = api.get(f"/jobs/{job_id}").json()
    assert record["state"] == "failed", record
    box = page.locator("#job-failure .error-box")
    assert "architecture is not supported" in box.inner_text()
    assert "internet" not in box.inner_text()
    worker_said = record["error"].split(": ", 1)[1]
    assert worker_said[:60] in box.inner_text()
    assert page.locator("#report-section").is_hidden()
    assert page.locator("#delete-job").is_visible()
    shot(page, screenshots, "16-job-failed")
    page.close()
    assert api.delete(f"/jobs/{job_id}").status_code == 204
    assert api.delete("/models/dash-broken").status_code == 204


def test_workers_page(alice: Any, stack: Any, screenshots: Path) -> None:
    expected = stack.client("alice").get("/workers").json()
    page = alice.new_page()
    page.goto(stack.base_url + "/workers")
    wait_ready(page)
    rows = page.locator("#workers-body tr")
    assert rows.count() == len(expected["workers"]) >= 1
    assert page.inner_text("#workers-online") == str(len(expected["workers"]))
    assert page.inner_text("#queue-depth") == str(expected["queue_depth"])
    assert re.fullmatch(r"\d+s|\d+m \d\ds", rows.first.locator("td").nth(2).inner_text())
    shot(page, screenshots, "12-workers")
    page.close()


def test_keyboard_navigation(alice: Any, stack: Any) -> None:
    page = alice.new_page()
    page.goto(stack.base_url + "/")
    wait_ready(page)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # From the header, Tab reaches every nav link in order, then the page's controls.
    page.focus(".brand")
    reached = []
    for _ in range(8):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.textContent.trim()"))
    assert reached[:4] == ["Jobs", "Submit", "Models", "Workers"]
    assert "Sign out" in reached
    page.close()


def test_other_key_cannot_see_the_job(browser: Any, stack: Any, screenshots: Path,
                                      flow: dict[str, Any]) -> None:
    job_id = flow["job1"]
    context = browser.new_context(viewport=LAPTOP, bypass_csp=True)
    page = context.new_page()
    sign_in(page, stack.base_url, stack.keys["bob"])
    assert page.locator(f"tr[data-job-id='{job_id}']").count() == 0
    assert not page.locator("#jobs-empty").is_hidden()
    page.goto(f"{stack.base_url}/jobs/{job_id}")
    wait_ready(page)
    assert "cannot see it" in page.inner_text("#job-error-load")
    assert page.locator("#report-section").is_hidden()
    shot(page, screenshots, "13-other-key-denied")
    for path in ("", "/report", "/artifact", "/files"):
        response = page.request.get(f"{stack.base_url}/api/v1/jobs/{job_id}{path}")
        assert response.status == 404, path
    context.close()


DRAW_CHARTS = """(report) => {
    const figures = reportCharts(report).map(drawChart);
    document.querySelector('main').replaceChildren(...figures);
    return figures.map(f => ({
        id: f.dataset.chart, kind: f.dataset.kind,
        scale: f.querySelector('svg')?.dataset.scale || null,
        bars: f.querySelectorAll('rect.bar-rect').length,
        titles: [...f.querySelectorAll('rect.bar-rect title')].map(t => t.textContent),
        lines: [...f.querySelectorAll('path.line')].map(p =>
            p.getAttribute('d').split(/[ML]/).filter(Boolean).map(xy => Number(xy.split(',')[1]))),
        ticks: [...f.querySelectorAll('svg text.tick')]
            .map(t => Number(t.textContent.replace(/,/g, ''))),
        references: f.querySelectorAll('line.target').length,
        legend: [...f.querySelectorAll('.chart-legend li')].map(li => li.textContent),
        summary: f.querySelector('.chart-summary')?.textContent || null,
        rows: f.querySelectorAll('details tbody tr').length}));
}"""


def _chart(chart_id: str, kind: str, series: list[tuple[str, list]], **extra: Any) -> dict:
    return {"id": chart_id, "title": chart_id.title(), "kind": kind, "x_label": "layer"
            if kind == "bar" else "step", "y_label": "value", "log_y": False, "reference": None,
            "series": [{"name": name, "points": points} for name, points in series], **extra}


def test_report_charts_are_drawn_from_the_generic_list(alice: Any, stack: Any,
                                                       screenshots: Path) -> None:
    """Whatever method made them, the page draws every chart in `report.charts` one way.

    The real-model job above is Wanda only, so its report shows just sparsity; these charts
    have the shape the library's report schema gives every chart.
    """
    loss = [[1, 3.2], [50, 2.9], [100, 2.7], [120, 2.65]]
    report = {
        "sparsity": {"total": 0.45, "per_layer": {"model.layers.0.mlp.up_proj": 0.4,
                                                  "model.layers.1.mlp.up_proj": 0.5}},
        "charts": [
            _chart("loss", "line", [("train", loss), ("held-out", [[1, 40.0], [120, 4.0]])],
                   log_y=True, y_label="loss"),
            _chart("rank", "bar", [("rank", [["model.layers.0.mlp.up_proj", 64],
                                             ["model.layers.0.mlp.down_proj", 48],
                                             ["model.layers.1.mlp.up_proj", 32]])],
                   reference=40, y_label="rank"),
            _chart("bits", "bar", [("bits", [["a", 4], ["b", 4], ["c", 4]])], y_label="bits"),
        ],
    }
    page = alice.new_page()
    page.goto(stack.base_url + "/")
    wait_ready(page)
    drawn = {c["id"]: c for c in page.evaluate(DRAW_CHARTS, report)}
    assert list(drawn) == ["sparsity", "loss", "rank", "bits"]  # per-layer sparsity kept first
    assert drawn["sparsity"]["bars"] == 2 and drawn["sparsity"]["references"] == 1

    curve = drawn["loss"]
    assert curve["scale"] == "log" and curve["legend"] == ["train", "held-out"]
    assert [len(line) for line in curve["lines"]] == [4, 2] and curve["rows"] == 6
    ticks = curve["ticks"]  # evenly spaced on a log axis: a constant ratio from tick to tick
    ratios = [b / a for a, b in itertools.pairwise(ticks)]
    assert ticks[0] == pytest.approx(2.65, rel=1e-3) and ticks[-1] == pytest.approx(40, rel=1e-3)
    assert max(ratios) == pytest.approx(min(ratios), rel=0.01)
    train = curve["lines"][0]  # pixel heights follow log(loss), not loss
    span = (math.log(3.2) - math.log(2.65)) / (math.log(40) - math.log(4))
    assert (train[-1] - train[0]) / (curve["lines"][1][-1] - curve["lines"][1][0]) == \
        pytest.approx(span, rel=0.02)

    ranks = drawn["rank"]
    assert ranks["scale"] == "linear" and ranks["bars"] == 3 and ranks["references"] == 1
    assert ranks["titles"][1] == "model.layers.0.mlp.down_proj: 48"
    assert drawn["bits"]["bars"] == 0 and drawn["bits"]["rows"] == 3
    assert drawn["bits"]["summary"] == "Every layer (3 of them) has bits 4."
    shot(page, screenshots, "14-report-charts")

    # A report that draws its own sparsity chart gets no second one from `sparsity.per_layer`.
    report["charts"].append(_chart("sparsity", "bar", [("sparsity", [["x", 0.1], ["y", 0.2]])]))
    drawn = page.evaluate(DRAW_CHARTS, report)
    assert [c["id"] for c in drawn].count("sparsity") == 1
    assert drawn[-1]["id"] == "sparsity" and drawn[-1]["bars"] == 2
    page.close()


def test_phone_width(alice: Any, stack: Any, screenshots: Path) -> None:
    """Every page fits a phone's width: no sideways scrolling of the page itself."""
    page = alice.new_page()
    page.set_viewport_size(PHONE)
    for path, name in (("/", "jobs"), ("/submit", "submit"), ("/models", "models"),
                       ("/workers", "workers")):
        page.goto(stack.base_url + path)
        wait_ready(page)
        assert_fits_width(page)
        shot(page, screenshots, f"15-phone-{name}")
    page.close()


def test_pages_work_under_csp(browser: Any, stack: Any) -> None:
    """With the real Content-Security-Policy enforced, every page runs with no violation."""
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(stack.base_url + "/signin")
    page.fill("#api_key", stack.keys["alice"])
    page.press("#api_key", "Enter")
    page.wait_for_url(stack.base_url + "/")
    for path in ("/", "/submit", "/models", "/workers"):
        page.goto(stack.base_url + path)
        assert "default-src 'self'" in page.evaluate(
            "fetch(location.href).then(r => r.headers.get('content-security-policy'))")
        for _ in range(100):
            if page.evaluate("window.dashboard.ready"):
                break
            page.wait_for_timeout(100)
        assert page.evaluate("window.dashboard.ready"), path
    assert problems == []
    context.close()


def test_sign_out_and_key_never_in_urls(alice: Any, stack: Any) -> None:
    page = alice.new_page()
    page.goto(stack.base_url + "/")
    wait_ready(page)
    page.click("#signout")
    page.wait_for_url(re.compile(r"/signin"))
    assert "compressors_key" not in {c["name"] for c in alice.cookies()}
    page.goto(stack.base_url + "/models")
    assert "/signin" in page.url
    for key in stack.keys.values():
        assert not [url for url in alice.requested_urls if key in url]
    page.close()


def test_no_external_requests(alice: Any, stack: Any) -> None:
    """Everything the pages loaded came from the app itself."""
    assert alice.requested_urls
    outside = [u for u in alice.requested_urls if not u.startswith(stack.base_url)]
    assert outside == []


def test_job_page_of_an_unknown_job_draws_no_empty_widgets(browser: Any, stack: Any) -> None:
    """Its own signed-in context: the module's `alice` has signed out by now."""
    context = browser.new_context(viewport=LAPTOP, bypass_csp=True)
    page = context.new_page()
    sign_in(page, stack.base_url, stack.keys["alice"])
    page.goto(stack.base_url + "/jobs/0123456789abcdef0123456789abcdef")
    page.wait_for_selector("#job-error-load:not(:empty)")
    assert "does not exist" in page.inner_text("#job-error-load")
    assert not page.locator(".detail-grid").is_visible()
    context.close()
