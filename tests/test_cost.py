"""The engine's cost model (`knrecall.attribution.cost`) against the benchmark's count on real model parameters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from knrecall.attribution.cost import PRESETS, engine_flops, engine_memory_bytes, shape_from_config
from knrecall.models.adapters import adapter_for
from tests.tiny_models import tiny_model

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
from attribution import engine_flops as counted_on_the_model  # noqa: E402


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("prompt_len, answer_len, steps", [(1, 1, 4), (12, 3, 20)])
def test_config_only_flops_equal_the_count_on_the_model(family, prompt_len, answer_len, steps):
    model = tiny_model(family)
    expected = counted_on_the_model(model, adapter_for(model), prompt_len, answer_len, steps)
    assert engine_flops(shape_from_config(model.config), prompt_len, answer_len, steps) == pytest.approx(expected)


def test_parameter_counts_of_the_paper_models():
    # public sizes: LLaMA-2-7B 6.74 B, LLaMA-3-8B 8.03 B, Mistral-7B 7.24 B (norm weights, ~0.3 M, left out)
    for name, billions in (("llama2-7b", 6.74), ("llama3-8b", 8.03), ("mistral-7b", 7.24)):
        assert shape_from_config(PRESETS[name]).total_params / 1e9 == pytest.approx(billions, abs=0.01)


def test_memory_grows_with_rows_and_dtype():
    shape = shape_from_config(PRESETS["llama2-7b"])
    small = engine_memory_bytes(shape, 16, 1, 20, 32, "bfloat16")
    assert engine_memory_bytes(shape, 16, 1, 20, 256, "bfloat16") > small
    assert engine_memory_bytes(shape, 16, 1, 20, 32, "float32") > 1.9 * small
    assert small > 2 * shape.total_params  # at least the bf16 weights


def test_estimate_command_prints_the_table(knrecall_cmd):
    result = subprocess.run(knrecall_cmd + ["estimate", "--prompts", "1000"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("| llama") or line.startswith("| mistral")]
    assert len(lines) == 3
    bad = subprocess.run(knrecall_cmd + ["estimate", "--models", "gpt-17"], capture_output=True, text=True)
    assert bad.returncode == 2 and "neither a preset" in bad.stderr


def test_estimate_names_a_config_it_cannot_read(knrecall_cmd, tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text('{"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "vocab_size": 50257}')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for folder, expected in ((gpt2, "this config (gpt2) has no integer num_hidden_layers"), (broken, "not valid JSON")):
        result = subprocess.run(knrecall_cmd + ["estimate", "--models", str(folder)], capture_output=True, text=True)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
