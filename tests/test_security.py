"""Loading checkpoints safely: safetensors only unless pickles are allowed, no checkpoint code unless trusted."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from knrecall.config import parse_params
from knrecall.errors import KnrecallError
from knrecall.models.load import ModelSpec, load_model
from knrecall.world.tokenizer import build_tokenizer
from tests.tiny_models import tiny_model

CUSTOM_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class CustomLM(LlamaForCausalLM):
    config_class = LlamaConfig
'''


def _save(folder, pickled: bool = False):
    """A tiny llama checkpoint with a tokenizer; weights as safetensors, or only as a pickle."""
    model = tiny_model("llama")
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if pickled:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    build_tokenizer(["a b c"]).save_pretrained(folder)
    return model


def test_safetensors_load(tmp_path):
    _save(tmp_path / "m")
    model, tokenizer = load_model(ModelSpec(str(tmp_path / "m")))
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.padding_side == "left"


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    original = _save(tmp_path / "m", pickled=True)
    assert not list((tmp_path / "m").glob("*.safetensors"))
    with pytest.raises(KnrecallError, match=r"only pickled weights \(pytorch_model.bin\), which can run code"):
        load_model(ModelSpec(str(tmp_path / "m")))
    model, _ = load_model(ModelSpec(str(tmp_path / "m"), allow_pickle=True))
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_checkpoint_code_is_refused_unless_trusted(tmp_path):
    folder = tmp_path / "custom"
    _save(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text(CUSTOM_CODE)
    with pytest.raises(KnrecallError, match=r"needs its own Python code \(config.json 'auto_map'\)"):
        load_model(ModelSpec(str(folder)))
    model, _ = load_model(ModelSpec(str(folder), trust_remote_code=True))
    assert type(model).__name__ == "CustomLM"  # the checkpoint's own class ran


def test_folders_without_weights_or_config_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KnrecallError, match="no config.json in the folder"):
        load_model(ModelSpec(str(tmp_path / "empty")))
    tiny_model("llama").config.save_pretrained(tmp_path / "config-only")
    with pytest.raises(KnrecallError, match=r"no weights in the folder \(no \*.safetensors file\)"):
        load_model(ModelSpec(str(tmp_path / "config-only")))


def test_security_switches_default_off_and_reach_the_cli(tmp_path):
    params = parse_params({})
    assert all(not m.trust_remote_code and not m.allow_pickle for m in params.models.values())
    _save(tmp_path / "m", pickled=True)
    args = ["intervene-prompt", "--model", str(tmp_path / "m"), "--prompt", "a b", "--gold", "c", "--neuron", "0:1",
            "--max-new-tokens", "1"]
    refused = run_cli(args)
    assert refused.returncode == 2 and "only pickled weights" in refused.stderr
    allowed = run_cli(args + ["--allow-pickle"])
    assert allowed.returncode == 0, allowed.stderr
