"""The package's layout: data flows one way (no phase imports a later one, shared utilities import no phase), no
module is over 400 lines, and neither `import knrecall` nor `--help` loads torch."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "knrecall"
PHASES = {"data": 0, "world": 0, "answer": 1, "attribution": 2, "recall": 3, "interventions": 4, "validation": 5,
          "report": 6}
DISPATCHER = "cli"  # the top-level parser imports every phase's commands


def room(module: str) -> str:
    """The first part of a module's name below the package: its phase folder, or a shared module's own name."""
    return module.split(".")[1] if "." in module else ""


def imports_of(path) -> set[str]:
    """Every knrecall module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("knrecall"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("knrecall"))
    return found


def test_no_phase_imports_a_later_one():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = room(module)
        if own == DISPATCHER:
            continue
        for imported in imports_of(path):
            other = room(imported)
            if other not in PHASES:
                continue  # a shared utility
            if own not in PHASES or PHASES[other] > PHASES[own]:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_neither_import_nor_help_loads_torch():
    code = ("import sys, knrecall; from knrecall.cli import build_parser; build_parser().format_help(); "
            "assert not {'torch', 'transformers', 'polars'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
