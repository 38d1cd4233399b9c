"""Loading what users hand us, and saving checkpoints that standard tools load unchanged."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from compressors import assets
from compressors.io.loading import ModelNotFoundError, load_model, resolve_model, save_checkpoint
from tests.conftest import tiny_model


def test_hub_id_fails_at_once_saying_offline():
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        resolve_model("HuggingFaceTB/SmolLM2-135M")


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
def test_saved_checkpoint_loads_unchanged_with_transformers(kind, tmp_path, smollm2_tokenizer):
    model = tiny_model(kind)
    save_checkpoint(model, smollm2_tokenizer, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "tokenizer_config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_encoder_loads_and_saves(tmp_path):
    loaded = load_model(assets.MINILM_NAME)
    assert not loaded.is_causal_lm
    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, local_files_only=True)
    batch = loaded.tokenizer(["a state of the union"], return_tensors="pt")
    with torch.no_grad():
        expected = loaded.model(**batch).last_hidden_state
        assert torch.equal(expected, reloaded(**batch).last_hidden_state)


def test_bin_weights_load_only_weights(tmp_path, smollm2_tokenizer):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_model(tmp_path)
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/compressors-pwned",))


def test_pickle_payload_in_bin_is_refused(tmp_path, smollm2_tokenizer):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"x": _Exploit()}, handle)
    if os.path.exists("/tmp/compressors-pwned"):
        os.remove("/tmp/compressors-pwned")
    with pytest.raises(Exception):  # noqa: B017 - any refusal is fine, as long as nothing ran
        load_model(tmp_path)
    assert not os.path.exists("/tmp/compressors-pwned")


def test_bundled_smollm2_is_a_plain_hf_folder(smollm2_path):
    assert resolve_model("smollm2-135m") == smollm2_path
    assert (smollm2_path / "model.safetensors").is_file()
    config = (smollm2_path / "config.json").read_text()
    assert "quantization_config" not in config and "LlamaForCausalLM" in config
