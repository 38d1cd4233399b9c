"""Submitting a recipe that would quantize low-rank factors is a 422 naming both steps (never a
queued job that publishes a broken checkpoint); merged back dense, the same chain is accepted."""

from __future__ import annotations

from service_helpers import auth


def test_lowrank_then_quantize_is_422_naming_both_steps(client, app, keys, tiny_model):
    queued = app.state.queue.count
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]), json={
        "model": "tiny",
        "recipe": {"steps": [{"method": "lowrank", "rank": 4, "train_steps": 0},
                             {"method": "quantize"}]},
    })
    assert response.status_code == 422
    detail = str(response.json()["detail"])
    assert "steps.1 (quantize) cannot follow steps.0 (lowrank)" in detail
    assert "export_dense" in detail
    assert app.state.queue.count == queued


def test_lowrank_export_dense_then_quantize_is_accepted(client, app, keys, tiny_model):
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]), json={
        "model": "tiny",
        "recipe": {"steps": [{"method": "lowrank", "rank": 4, "train_steps": 0,
                              "export_dense": True}, {"method": "quantize"}]},
    })
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    headers = auth(keys["alice"])
    assert client.post(f"/api/v1/jobs/{job}/cancel", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/jobs/{job}", headers=headers).status_code == 204
