"""Bad inputs, each through the command line as a user meets it: one line naming the cause, exit 2, no output file.

Each case runs in this process (`run_cli`), a few also as a real command line in a fresh process. Beside them, the
per-item problems that do NOT stop a run (`knrecall.skips`): one warning line per skipped item naming it and the
reason, the count in the output's metadata (and the answering phase's skipped table), exit 0 and every other item
answered. A model whose every two-hop question is skipped still stops (the context case below).

`python tests/test_bad_inputs.py` prints every case with the message it gives (for the documentation).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, too
from conftest import run_cli  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

from knrecall.world.tokenizer import build_tokenizer  # noqa: E402

GOOD = {"case_id": "c1", "two_hop": "Where is the capital of X?", "fact1_query": ["What is X?"], "fact1_ans": "Y",
        "fact2_query": ["Where is Y?"], "fact2_ans": "Z"}
WORDS = "Q: A: What is X Y Z Where the capital of ? a b c".split()


def _tiny(folder: Path, family: str = "llama") -> Path:
    if family == "llama":
        model = tiny_model("llama")
    else:
        config = AutoConfig.for_model(family, vocab_size=64, hidden_size=32, n_layer=2, n_head=4,
                                      pad_token_id=0, bos_token_id=2, eos_token_id=3)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    build_tokenizer([" ".join(WORDS)]).save_pretrained(folder)
    return folder


def _dataset(tmp: Path, records) -> Path:
    path = tmp / "data.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return path


def _items(tmp: Path, two_hop: str = GOOD["two_hop"]) -> Path:
    from knrecall.data.items import Item, write_items

    path = tmp / "items.parquet"
    write_items([Item("c1", "tfrkn", two_hop, ["What is X?"], "Y", ["Where is Y?"], "Z")], path)
    return path


def _answer_params(model: str, conditions=("direct",), **model_keys) -> str:
    return json.dumps({"answer": {"conditions": list(conditions), "max_new_tokens": 2},
                       "prompts": {"direct": "Q: {question} A:", "conflict_hop2": "Context: {context} Q: {question} A:"},
                       "model": {"path": model, **model_keys}, "seed": 0})


def _two_items(tmp: Path, **second) -> Path:
    """Items c1 (good) and c2 (GOOD with the `second` changes)."""
    from knrecall.data.items import Item, write_items

    path = tmp / "items.parquet"
    fields = {"two_hop": GOOD["two_hop"], "fact1_query": ["What is X?"], "fact1_ans": "Y",
              "fact2_query": ["Where is Y?"], "fact2_ans": "Z"}
    write_items([Item("c1", "tfrkn", **fields), Item("c2", "tfrkn", **{**fields, **second})], path)
    return path


def _attribute_params() -> str:
    return json.dumps({"attribution": {"steps": 2, "shards": 1}, "prompts": {"direct": "Q: {question} A:"},
                       "model": {"path": "unused"}})


def _params_file(tmp: Path, text: str) -> Path:
    path = tmp / "params.yaml"
    path.write_text(text)
    return path


# name -> builder(tmp) returning (argv, output path, expected part of the message)
CASES = {
    "malformed JSON": lambda t: (["data", "import", "--input", str(_dataset(t, "[{\"case_id\": ")),
                                  "--out", str(t / "out.parquet")], t / "out.parquet", "not valid JSON"),
    "missing field": lambda t: (["data", "import", "--input", str(_dataset(t, [{k: v for k, v in GOOD.items()
                                                                               if k != "fact2_ans"}])),
                                 "--out", str(t / "out.parquet")], t / "out.parquet", "field 'fact2_ans'"),
    "empty paraphrase list": lambda t: (["data", "import", "--input", str(_dataset(t, [{**GOOD, "fact1_query": []}])),
                                        "--out", str(t / "out.parquet")], t / "out.parquet", "field 'fact1_query'"),
    "duplicated case ids": lambda t: (["data", "import", "--input", str(_dataset(t, [GOOD, {**GOOD, "fact2_ans": "W"}])),
                                      "--out", str(t / "out.parquet")], t / "out.parquet", "duplicate case_id 'c1'"),
    "answer that tokenizes to nothing": lambda t: (
        ["attribute-prompt", "--model", str(_tiny(t / "m")), "--prompt", "Q: What is X ? A:", "--answer", "  ",
         "--out", str(t / "map.parquet")], t / "map.parquet", "the answer tokenizes to nothing"),
    "prompt longer than the model's context": lambda t: (
        ["answer", "--items", str(_items(t, "What is X ? " * 20)), "--params", _answer_params(str(_tiny(t / "m"))),
         "--out", str(t / "p.parquet")], t / "p.parquet", "more than the model's context of 64"),
    "unknown model family": lambda t: (
        ["attribute-prompt", "--model", str(_tiny(t / "bloom", "bloom")), "--prompt", "Q: What is X ? A:",
         "--answer", "Y", "--out", str(t / "map.parquet")], t / "map.parquet", "model family 'bloom' is not supported"),
    "missing model path": lambda t: (
        ["answer", "--items", str(_items(t)), "--params", _answer_params("/nonexistent/model"),
         "--out", str(t / "p.parquet")], t / "p.parquet", "model /nonexistent/model: no such directory"),
    "model folder without weights": lambda t: (
        ["answer", "--items", str(_items(t)), "--params", _answer_params(str(_config_only(t / "m"))),
         "--out", str(t / "p.parquet")], t / "p.parquet", "no weights in the folder"),
    "invalid params type": lambda t: (["check-params", str(_params_file(t, "world:\n  people: lots\n"))], None,
                                      "key 'world.people'"),
    "unknown param key": lambda t: (["check-params", str(_params_file(t, "colour: blue\n"))], None,
                                    "unknown key 'colour'"),
    "shard count 0": lambda t: (["check-params", str(_params_file(t, "attribution:\n  shards: 0\n"))], None,
                                "key 'attribution.shards'"),
    "params that are not JSON": lambda t: (
        ["answer", "--items", str(_items(t)), "--params", "{answer:", "--out", str(t / "p.parquet")], t / "p.parquet",
        "--params for answer: not valid JSON"),
    "dataset file missing": lambda t: (["data", "import", "--input", str(t / "nope.json"), "--out",
                                        str(t / "out.parquet")], t / "out.parquet", "nope.json: file not found"),
    "unknown neuron definition": lambda t: (
        ["check-params", str(_params_file(t, "attribution:\n  neuron: post_activation\n"))], None,
        "key 'attribution.neuron'"),
    "KNs selected under another neuron definition": lambda t: (
        ["measure", "--items", str(t / "items.parquet"), "--predictions", str(t / "p.parquet"),
         "--kns", str(_kns(t, "ffn_input")), "--params", _measure_params("pre_activation"),
         "--baselines", str(t / "b.parquet"), "--steps", str(t / "s.parquet"), "--profile", str(t / "r.parquet"),
         "--out", str(t / "a.parquet")], t / "a.parquet",
        "the KNs were selected with attribution.neuron = ffn_input, but this run reads neurons as pre_activation"),
    "chat template on, tokenizer without one": lambda t: (
        ["answer", "--items", str(_items(t)), "--params", _answer_params(str(_tiny(t / "m")), chat_template=True),
         "--model-name", "tiny-chat", "--out", str(t / "p.parquet")], t / "p.parquet",
        "model 'tiny-chat': chat_template is on, but its tokenizer has no chat template"),
}

# name -> builder(tmp) returning (argv, output path, skipped table or None, [(case, reason)] expected per log line)
SKIP_CASES = {
    "an answer that cannot be tokenized": lambda t: (
        ["answer", "--items", str(_two_items(t, fact2_ans="W")), "--params", _answer_params(str(_tiny(t / "m"))),
         "--out", str(t / "p.parquet"), "--skipped", str(t / "s.parquet")], t / "p.parquet", t / "s.parquet",
        [("item 'c2' hop2 paraphrase 0", "answer_tokens"), ("item 'c2' under direct", "answer_tokens")]),
    "a prompt longer than the model's context": lambda t: (
        ["answer", "--items", str(_two_items(t, two_hop="What is X ? " * 20)), "--params",
         _answer_params(str(_tiny(t / "m"))), "--out", str(t / "p.parquet"), "--skipped", str(t / "s.parquet")],
        t / "p.parquet", t / "s.parquet", [("item 'c2' under direct", "prompt_too_long")]),
    "no conflict candidate": lambda t: (
        ["answer", "--items", str(_two_items(t)), "--params",
         _answer_params(str(_tiny(t / "m")), ("direct", "conflict_hop2")), "--out", str(t / "p.parquet"),
         "--skipped", str(t / "s.parquet")], t / "p.parquet", t / "s.parquet",
        [("item 'c1' under conflict_hop2", "no_conflict_candidate"),
         ("item 'c2' under conflict_hop2", "no_conflict_candidate")]),
    "attribution: an answer that cannot be tokenized": lambda t: (
        ["attribute", "--items", str(_two_items(t, fact2_query=["Where is X?"], fact2_ans="W")), "--params",
         _attribute_params(), "--model-path", str(_tiny(t / "m")), "--out", str(t / "a.parquet"),
         "--layers-out", str(t / "a.layers.parquet")], t / "a.parquet", None,
        [("fact ", "answer_tokens")]),
}


def _kns(tmp: Path, neuron: str) -> Path:
    """A (empty) KN file whose metadata says which neuron definition it was selected under."""
    import pyarrow as pa

    from knrecall.io import provenance, write_parquet

    path = tmp / "kns.parquet"
    write_parquet(pa.table({"fact_id": pa.array([], pa.string())}), path, provenance({}, thresholds={"neuron": neuron}))
    return path


def _measure_params(neuron: str) -> str:
    return json.dumps({"recall": {}, "attribution": {"neuron": neuron}, "prompts": {"direct": "Q: {question} A:"},
                       "model": {"path": "/nonexistent/model"}, "seed": 0})


def _config_only(folder: Path) -> Path:
    tiny_model("llama").config.save_pretrained(folder)
    return folder


def _run(argv):
    """The real command line: a fresh process, a clean environment."""
    return subprocess.run([sys.executable, "-m", "knrecall", *argv], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


# the cases also run as a real command line in a fresh process (the others run in this one: `run_cli`)
IN_A_FRESH_PROCESS = ["malformed JSON", "answer that tokenizes to nothing", "missing model path",
                      "KNs selected under another neuron definition"]


@pytest.mark.parametrize("case, fresh",
                         [(case, False) for case in CASES] + [(case, True) for case in IN_A_FRESH_PROCESS],
                         ids=[*CASES, *(f"{case} (fresh process)" for case in IN_A_FRESH_PROCESS)])
def test_bad_input_gives_one_line_and_no_output(case, fresh, tmp_path):
    argv, output, expected = CASES[case](tmp_path)
    result = _run(argv) if fresh else run_cli(argv)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("knrecall: error: "), result.stderr
    assert expected in lines[0]
    if output is not None:
        assert not output.exists() and not list(output.parent.glob(f".{output.name}.*"))  # nor a temporary file


def test_the_matrix_covers_at_least_twelve_cases():
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", list(SKIP_CASES))
def test_a_per_item_problem_is_skipped_counted_and_the_run_continues(case, tmp_path):
    import polars as pl

    from knrecall.io import read_metadata

    argv, output, skipped_table, expected = SKIP_CASES[case](tmp_path)
    result = run_cli(argv)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "knrecall: error" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if " WARNING skipped " in line]
    assert len(lines) == len(expected), result.stderr  # one line per skipped prompt
    for line, (what, reason) in zip(lines, expected):
        assert " WARNING skipped " in line and what in line and f": {reason}: " in line, line
    counts = read_metadata(output)["skipped_counts"]
    assert counts["n_skipped"] == len(expected)
    assert counts["by_reason"] == {r: sum(x == r for _, x in expected) for _, r in expected}
    if skipped_table is not None:
        table = pl.read_parquet(skipped_table)
        assert table["reason"].to_list() == [r for _, r in expected] and set(table["phase"]) == {"answer"}
        predictions = pl.read_parquet(output)
        assert "c1" in predictions.filter(pl.col("kind") == "two_hop")["case_id"].to_list()  # the others go on
    else:
        assert pl.read_parquet(output.with_suffix(".layers.parquet")).height > 0


if __name__ == "__main__":
    import tempfile

    for name, build in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            result = _run(build(Path(tmp))[0])
            print(f"- {name}: exit {result.returncode}: `{result.stderr.strip()}`")
    for name, build in SKIP_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            result = _run(build(Path(tmp))[0])
            lines = [line.split(" WARNING ", 1)[1] for line in result.stderr.splitlines() if " WARNING skipped " in line]
            print(f"- {name} (skipped, exit {result.returncode}): " + "; ".join(f"`{line}`" for line in lines))
