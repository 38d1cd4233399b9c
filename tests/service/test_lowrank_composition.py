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


def test_fisher_weighting_on_an_encoder_is_422_naming_the_field(client, app, keys, settings,
                                                                 smollm2_tokenizer):
    """The default `weighting: fisher` needs a next-token loss: on a model whose config declares
    an encoder (BertModel) the submission is refused naming `steps.0.weighting`, before any
    job queues; `weighting: activations` on the same model is accepted."""
    from tests.conftest import save_tiny_with_tokenizer

    folder = settings.models_dir / "tiny-bert"
    if not folder.exists():
        save_tiny_with_tokenizer("bert", folder, smollm2_tokenizer)
    queued = app.state.queue.count
    step = {"method": "lowrank", "target_params": 0.5, "train_steps": 0}
    refused = client.post("/api/v1/jobs", headers=auth(keys["alice"]), json={
        "model": "tiny-bert", "recipe": {"steps": [step]}})
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    hit = [e for e in detail if e["loc"][-3:] == ["steps", 0, "weighting"]]
    assert hit and "no LM head" in hit[0]["msg"] and "BertModel" in hit[0]["msg"], detail
    assert app.state.queue.count == queued
    accepted = client.post("/api/v1/jobs", headers=auth(keys["alice"]), json={
        "model": "tiny-bert", "recipe": {"steps": [{**step, "weighting": "activations"}]}})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()["id"]
    headers = auth(keys["alice"])
    assert client.post(f"/api/v1/jobs/{job}/cancel", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/jobs/{job}", headers=headers).status_code == 204
