"""The Python API (`knrecall/__init__.py`): `import knrecall` loads no torch, the README's "Python API" examples run
as written and print what the README says they print, the numbers they print are right (Δ recomputed here with a
plain forward hook), and bad input is one clear `KnrecallError`.

The world example runs in a folder holding what `make demo` writes (`results/models/world`, `results/items.parquet`),
made here by the workflow's own commands with the tiny test world (a few seconds); the checkpoint example runs on a
tiny random GPT-2 saved locally (its hub id replaced by that folder: tests never download).
"""

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

import knrecall
from conftest import ROOT, TINY_PARAMS
from knrecall.cli import main
from knrecall.world.tokenizer import build_tokenizer
from tiny_models import tiny_model

README = (ROOT / "README.md").read_text()


def readme_blocks() -> list[tuple[str, str]]:
    """(code, printed output) of each ```python block of the README's "Python API" section, with the ```text block
    that follows it ("" when none does)."""
    section = README.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```\n(?:.*?```text\n(.*?)```)?", section, flags=re.S)


def shape(line: str) -> str:
    """A printed line as a pattern: numbers, (layer, neuron) lists and quoted text may differ, the words may not."""
    pattern = re.escape(line)
    pattern = re.sub(r"\\\[.*\\\]", r"\\[.*\\]", pattern)
    pattern = re.sub(r"'[^']*'|\"[^\"]*\"", "(?:'[^']*'|\"[^\"]*\")", pattern)
    return re.sub(r"-?\d+(?:\\\.\d+)?", r"-?\\d+(?:\\.\\d+)?", pattern)


def run_block(code: str, cwd: Path, replace: dict[str, str] | None = None) -> tuple[dict, str]:
    for old, new in (replace or {}).items():
        assert old in code, f"the README example no longer has {old!r}"
        code = code.replace(old, new)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Python API)", "exec"), namespace)
    return namespace, out.getvalue()


def assert_prints_as_documented(printed: str, documented: str) -> None:
    lines, expected = printed.strip().splitlines(), documented.strip().splitlines()
    assert len(lines) == len(expected), printed
    for line, claim in zip(lines, expected):
        assert re.fullmatch(shape(claim), line), f"printed {line!r}, the README shows {claim!r}"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder with results/models/world and results/items.parquet, as `make demo` leaves them (tiny world)."""
    root = tmp_path_factory.mktemp("demo")
    world, results = root / "world", root / "results"
    steps = [["world", "generate", "--params", json.dumps(TINY_PARAMS["world"]), "--seed", "0", "--out-dir", str(world)],
             ["world", "train", "--corpus", str(world / "corpus.jsonl"), "--items", str(world / "items.json"),
              "--params", json.dumps({**TINY_PARAMS["world_model"], "epochs": 3}), "--seed", "0", "--threads", "1",
              "--out-dir", str(results / "models" / "world")],
             ["data", "import", "--format", "tfrkn", "--input", str(world / "items.json"),
              "--out", str(results / "items.parquet")]]
    for argv in steps:
        assert main(["-q", *argv]) == 0
    return root


def test_import_knrecall_loads_no_torch():
    code = "import sys, knrecall; assert 'torch' not in sys.modules; print(knrecall.__all__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "recall_score" in result.stdout


def test_readme_world_example_prints_what_it_claims(demo_folder):
    (code, documented), _ = readme_blocks()
    assert documented, "the README shows no output for the world example"
    ns, printed = run_block(code, demo_folder)
    assert_prints_as_documented(printed, documented)
    hops, result, model, tokenizer = ns["hops"], ns["result"], ns["model"], ns["tokenizer"]
    lines = printed.strip().splitlines()
    for hop, kns in enumerate(hops, start=1):  # the KN counts printed are the selections'
        assert f"{len(kns)} refined KNs" in lines[hop]
    assert sum(map(len, hops)) > 0 and result.n_neurons == sum(map(len, hops))
    assert f"P(gold) {result.before.gold_prob:.4f} -> {result.after.gold_prob:.4f}" in lines[-1]
    assert result.after.gold_prob != result.before.gold_prob  # suppressing the KNs moves the gold probability
    # Δ recomputed by hand: the down_proj inputs at the last position, read with a plain forward pre-hook
    item, two_hop = ns["item"], ns["two_hop"]
    for hop, kns in enumerate(hops, start=1):
        if not len(kns):
            continue
        prompts = [ns["single_hop_prompt"](q) for q in item[f"fact{hop}_query"]]
        base = torch.stack([ffn_inputs(model, tokenizer, p) for p in prompts]).mean(dim=0)
        acts = ffn_inputs(model, tokenizer, two_hop)
        delta = torch.stack([acts[layer, i] / base[layer, i] for layer, i in kns.neurons]).mean()
        assert f"hop {hop}: delta = {float(delta):.3f}" in printed


def ffn_inputs(model, tokenizer, prompt: str) -> torch.Tensor:
    """[layers, width]: every layer's down_proj input at the prompt's last token."""
    captured = []
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0][0, -1]))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(**tokenizer(prompt, return_tensors="pt"))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(captured).float()


def test_readme_checkpoint_example_runs_on_a_local_folder(tmp_path):
    _, (code, documented) = readme_blocks()
    hub_id = re.search(r'CHECKPOINT = "([^"]+)"', code)[1]
    prompts = re.search(r"prompts = (\[.*?\])", code, flags=re.S)[1]
    folder = tmp_path / "tiny-gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    build_tokenizer(eval(prompts) + ["Paris"]).save_pretrained(folder)
    _, printed = run_block(code, tmp_path, {f'CHECKPOINT = "{hub_id}"': f'CHECKPOINT = "{folder}"'})
    assert_prints_as_documented(printed, documented)


def test_bad_input_is_one_clear_error(demo_folder):
    model, tokenizer = knrecall.load(demo_folder / "results" / "models" / "world")
    with pytest.raises(knrecall.KnrecallError, match="non-empty list of prompts"):
        knrecall.attribute_paraphrases(model, tokenizer, "Q: one prompt? A:", "x")
    with pytest.raises(knrecall.KnrecallError, match="unknown engine"):
        knrecall.attribute(model, tokenizer, "Q: a A:", "b", engine="slow")
    with pytest.raises(knrecall.KnrecallError, match="no attribution maps"):
        knrecall.select_kns([])
    with pytest.raises(knrecall.KnrecallError, match="FactKNs"):
        knrecall.recall_score(model, tokenizer, [(0, 1)], "Q: a A:")
    with pytest.raises(knrecall.KnrecallError, match="out of range"):
        answer = pl.read_parquet(demo_folder / "results" / "items.parquet")["fact1_ans"][0]
        knrecall.intervene(model, tokenizer, "Q: a A:", answer, [(0, 10**6)])
    with pytest.raises(knrecall.KnrecallError, match="neurons must be"):
        knrecall.intervene(model, tokenizer, "Q: a A:", answer, "0:1")
    with pytest.raises(knrecall.KnrecallError, match="no such directory"):
        knrecall.load(demo_folder / "missing")


def test_api_defaults_are_the_parameter_defaults():
    import inspect

    from knrecall.config import AttributionParams, InterventionParams, KnsParams, RecallParams

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    attribution, kns = AttributionParams(), KnsParams()
    for fn in (knrecall.attribute, knrecall.attribute_paraphrases):
        d = defaults(fn)
        assert (d["steps"], d["rule"], d["target"], d["neuron"]) == (attribution.steps, attribution.rule,
                                                                      attribution.target, attribution.neuron)
    d = defaults(knrecall.select_kns)
    assert (d["coarse_threshold"], d["refine_fraction"], d["refine_mode"], list(d["adaptive_band"])) == (
        kns.coarse_threshold, kns.refine_fraction, kns.refine_mode, kns.adaptive_band)
    assert defaults(knrecall.recall_score)["mode"] == RecallParams().delta
    d, interventions = defaults(knrecall.intervene), InterventionParams()
    assert (d["factor"], d["policy"]) == (interventions.suppress_factor, interventions.position_policy)
