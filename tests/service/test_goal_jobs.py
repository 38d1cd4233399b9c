"""Jobs that carry a goal instead of a recipe: validated at submission like a recipe (422
naming the field, nothing enqueued), run by a real worker through the search, which records
the chosen recipe and publishes the Pareto plot; the dashboard's compare page is served."""

from __future__ import annotations

import pytest
from service_helpers import auth, job_state, wait_for, wait_state

TINY_GOAL = {"max_perplexity_ratio": 1.05, "candidates": 1, "dtypes": ["float32"],
             "sensitivity": {"samples": 2, "seqlen": 32},
             "calibration": {"samples": 2, "seqlen": 32},
             "evaluation": {"windows": 2, "seqlen": 32}, "verify_windows": 1, "refine": False}


@pytest.mark.parametrize("body,named", [
    ({"goal": {"minimize": "size_bytes"}}, "max_perplexity_ratio"),
    ({"goal": {"max_perplexity_ratio": 0.5}}, "max_perplexity_ratio"),
    ({"goal": {"max_perplexity_ratio": 1.1, "methods": ["gzip"]}}, "methods"),
    ({"goal": {"max_perplexity_ratio": 1.1, "evaluation": {"text": "/etc/passwd"}}}, "text"),
    ({"goal": {"max_perplexity_ratio": 1.1, "recovery": {"text": "/etc/passwd"}}},
     '"recovery","text"'),
    ({"goal": {"max_perplexity_ratio": 1.1, "recovery": {"second_text": "/etc/passwd"}}},
     '"recovery","second_text"'),
    ({"goal": {"max_perplexity_ratio": 1.1}, "recipe": {"steps": [{"method": "quantize"}]}},
     "exactly one"),
    ({}, "exactly one"),
])
def test_bad_goal_is_422_and_enqueues_nothing(client, app, keys, tiny_model, body, named):
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                           json={"model": "tiny", **body})
    assert response.status_code == 422, response.text
    assert named in response.text
    assert app.state.queue.count == 0


def test_goal_job_is_recorded_with_its_goal(client, app, keys, tiny_model):
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                           json={"model": "tiny", "goal": {"max_perplexity_ratio": 1.1}})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["goal"]["max_perplexity_ratio"] == 1.1 and job["goal"]["candidates"] == 3
    assert job["recipe"] == {} and job["methods"] == ["quantize"]
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth(keys["alice"]))
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]), json={
        "model": "tiny", "goal": {"max_perplexity_ratio": 1.1, "recovery": {}}})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["methods"] == ["quantize", "perp"] and job["goal"]["recovery"]["mode"] == "masklora"
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth(keys["alice"]))


def test_worker_runs_the_search_and_records_the_chosen_recipe(client, keys, workers,
                                                               tiny_model):
    workers.start()
    wait_for(lambda: client.get("/readyz").status_code == 200)
    key = keys["alice"]
    response = client.post("/api/v1/jobs", headers=auth(key),
                           json={"model": "tiny", "name": "search", "goal": TINY_GOAL})
    assert response.status_code == 202, response.text
    job = wait_state(client, key, response.json()["id"], ("succeeded", "failed"))
    assert job["state"] == "succeeded", job["error"]
    assert job["recipe"]["steps"][0]["method"] == "quantize"
    report = client.get(f"/api/v1/jobs/{job['id']}/report", headers=auth(key)).json()
    assert report["recipe"] == job["recipe"]
    assert report["search"]["candidates"][report["search"]["chosen"]]["final"]["meets"]
    svg = client.get(f"/api/v1/jobs/{job['id']}/files/pareto.svg", headers=auth(key))
    assert svg.status_code == 200 and svg.text.startswith("<svg")
    assert job_state(client, key, job["id"])["metrics"]["after"]["size_bytes"] < \
        job["metrics"]["before"]["size_bytes"]
    client.post("/api/v1/session", json={"key": key})
    page = client.get("/compare?model=tiny")
    assert page.status_code == 200 and "search.js" in page.text
    assert "search-section" in client.get(f"/jobs/{job['id']}").text
    client.delete("/api/v1/session")
    client.cookies.clear()


@pytest.mark.parametrize("body,loc", [
    ({"goal": {"max_perplexity_ratio": 1.1}}, ["body", "goal"]),
    ({"recipe": {"steps": [{"method": "perp", "mode": "norms"}]}},
     ["body", "recipe", "steps", 0, "method"]),
])
def test_perplexity_work_on_an_encoder_is_422_before_anything_queues(
        client, app, keys, settings, smollm2_tokenizer, body, loc):
    """The search ranks candidates by perplexity and PERP trains on the next-token loss: on
    a model whose config declares an encoder (BertModel) a goal, or a recipe with a perp
    step, is refused at submission naming the architecture, before any job queues."""
    from tests.conftest import save_tiny_with_tokenizer

    folder = settings.models_dir / "tiny-bert"
    if not folder.exists():
        save_tiny_with_tokenizer("bert", folder, smollm2_tokenizer)
    queued = app.state.queue.count
    refused = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                          json={"model": "tiny-bert", **body})
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert [e["loc"] for e in detail] == [loc], detail
    assert "LM head" in detail[0]["msg"] and "BertModel" in detail[0]["msg"]
    assert app.state.queue.count == queued
