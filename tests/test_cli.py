"""Every subcommand answers --help; errors are one line with exit status 2."""

import subprocess
import sys

import pytest

from conftest import run_cli
from knrecall.cli import build_parser

COMMANDS = [[], ["world"], ["world", "generate"], ["world", "train"], ["world", "metrics"], ["data"], ["data", "import"],
            ["answer"], ["attribute"], ["select-kns"], ["attribute-prompt"], ["measure"], ["recall"], ["intervene"],
            ["intervention-summary"], ["intervene-prompt"], ["report"], ["tables"], ["schema"], ["check-params"]]


def run(*args):
    return subprocess.run([sys.executable, "-m", "knrecall", *args], capture_output=True, text=True)


def test_top_level_help_lists_every_subcommand():
    out = run("--help").stdout
    for name in ("world", "data", "answer", "attribute", "measure", "recall", "intervene", "report", "tables", "schema",
                 "check-params"):
        assert f"    {name}" in out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "knrecall")
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: knrecall" in capsys.readouterr().out


def test_bad_world_params_fail_in_one_line(tmp_path):
    result = run("world", "generate", "--params", '{"people": -3}', "--out-dir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("knrecall: error:") and "people" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_missing_model_path_fails_in_one_line(tmp_path):
    from knrecall.data.items import Item, write_items

    items = tmp_path / "items.parquet"
    write_items([Item("1", "tfrkn", "q?", ["a?"], "b", ["c?"], "d")], items)
    params = '{"answer": {"conditions": ["direct"], "max_new_tokens": 2}, "prompts": {"direct": "Q: {question} A:"}, "model": {"path": "/nonexistent/model"}, "seed": 0}'
    result = run_cli(["answer", "--items", str(items), "--params", params, "--out", str(tmp_path / "p.parquet")])
    assert result.returncode == 2
    assert "/nonexistent/model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.parquet").exists()
