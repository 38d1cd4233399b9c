"""The whole path on the real SmolLM2-135M: a Wanda job submitted over HTTP, run by a real
worker process, watched over SSE, downloaded as a tar, and loaded back with transformers."""

from __future__ import annotations

import io
import tarfile

import pytest
from service_helpers import auth, job_state, read_sse, submit

# tests/conftest.py's SMALL_BUDGETS (that module cannot be imported by name from here).
SMALL_BUDGETS = {"calibration": {"samples": 4, "seqlen": 128},
                 "evaluation": {"windows": 4, "seqlen": 128}}


@pytest.mark.real_model
def test_wanda_on_smollm2_over_http(client, keys, workers, tmp_path, smollm2_path):
    workers.start()
    key = keys["alice"]
    recipe = {"steps": [{"method": "wanda", "sparsity": 0.5}], **SMALL_BUDGETS}
    job = submit(client, key, model="smollm2-135m", recipe=recipe, name="wanda on smollm2")
    events = read_sse(client, key, job["links"]["events"])
    assert events[-1]["state"] == "succeeded", events[-1]
    stages = {e["stage"] for e in events if e["state"] == "running"}
    assert {"compressing", "evaluating"} <= stages

    record = job_state(client, key, job["id"])
    assert record["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert record["metrics"]["after"]["perplexity"] > record["metrics"]["before"]["perplexity"]
    report = client.get(f"/api/v1/jobs/{job['id']}/report", headers=auth(key)).json()
    assert report["recipe"]["steps"][0]["method"] == "wanda"

    body = client.get(f"/api/v1/jobs/{job['id']}/artifact", headers=auth(key)).content
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(tmp_path, filter="data")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / job["id"], local_files_only=True)
    for layer in model.model.layers:
        zeros = (layer.mlp.up_proj.weight == 0).float().mean().item()
        assert zeros == pytest.approx(0.5, abs=0.01)
    from safetensors.torch import load_file

    original = load_file(smollm2_path / "model.safetensors")["model.embed_tokens.weight"]
    assert (model.model.embed_tokens.weight == original).all()  # embeddings are never pruned
