"""Plain-text tables of the metrics files: the paper's Table-4 layout for recall, and the intervention table.

Reads only `results/metrics/recall.json` and `results/metrics/interventions.json` (whichever exist); prints Markdown
so the tables paste into notes and issues as they are.
"""

from __future__ import annotations

from typing import Any


def _num(value: float | None, ci: list[float] | None = None, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if ci:
        low, high = ci
        text += f" [{low:+.2f}, {high:+.2f}]" if signed else f" [{low:.2f}, {high:.2f}]"
    return text


def recall_table(recall: dict[str, Any]) -> str:
    """Table 4 of the reported measurement (recall.delta × recall.position, named per model), with the paper's
    reading (ratio at the reasoning step) in the last two columns."""
    lines = ["| model | measurement | condition | n | accuracy | TT | TF | FT | FF | MH | SC | Δ1 | Δ2 "
             "| MH (paper) | SC (paper) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, entry in recall.get("models", {}).items():
        measured = entry.get("measurement") or {"variant": "ratio", "position": "step"}
        paper = entry.get("paper_reading", {}).get("conditions", {})
        for condition, m in entry.get("conditions", {}).items():
            cells = [model, f"{measured['variant']} @ {measured['position']}", condition, str(m.get("n_items", "")),
                     _num(m.get("accuracy"), m.get("accuracy_ci"))]
            cells += [_num(m.get(k), m.get(f"{k}_ci")) for k in ("TT", "TF", "FT", "FF", "MH", "SC")]
            cells += [_num(m.get(f"delta{h}_mean"), m.get(f"delta{h}_mean_ci")) for h in (1, 2)]
            p = paper.get(condition, {})
            cells += [_num(p.get(k), p.get(f"{k}_ci")) for k in ("MH", "SC")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_table(recall: dict[str, Any]) -> str:
    lines = ["| model | condition | SC planted (n) | SC composed (n) | diff CI | Δ1 bridge / subject | diff CI "
             "| Δ2 bridge / subject | diff CI |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, entry in recall.get("models", {}).items():
        for condition, v in (entry.get("validation") or {}).items():
            cells = [model, condition,
                     f"{_num(v.get('sc_shortcut_planted'))} ({v.get('n_shortcut_planted')})",
                     f"{_num(v.get('sc_composed'))} ({v.get('n_composed')})",
                     _ci(v.get("sc_difference_ci"))]
            for hop in (1, 2):
                cells += [f"{_num(v.get(f'delta{hop}_heldout_bridge'))} / {_num(v.get(f'delta{hop}_heldout_subject'))}",
                          _ci(v.get(f"delta{hop}_difference_ci"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def intervention_table(interventions: dict[str, Any]) -> str:
    lines = ["| model | condition | intervention | n | accuracy | Δ accuracy [CI] | Δ gold p [CI] "
             "| random Δ accuracy [CI] | random Δ gold p [CI] | KN/random size of Δp [CI] |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, entry in interventions.get("models", {}).items():
        for condition, by_name in entry.get("conditions", {}).items():
            base = by_name.get("base", {})
            lines.append(f"| {model} | {condition} | base | {base.get('n_items', '')} | "
                         f"{_num(base.get('accuracy'), base.get('accuracy_ci'))} | | | | | |")
            for name, m in by_name.items():
                if name == "base":
                    continue
                control = m.get("random", {})
                cells = [model, condition, name, str(m.get("n_items", "")), _num(m.get("accuracy")),
                         _num(m.get("delta_accuracy"), m.get("delta_accuracy_ci"), True),
                         _num(m.get("delta_gold_prob"), m.get("delta_gold_prob_ci"), True),
                         _num(control.get("delta_accuracy"), control.get("delta_accuracy_ci"), True),
                         _num(control.get("delta_gold_prob"), control.get("delta_gold_prob_ci"), True),
                         _num(m.get("kn_vs_random_ratio"), m.get("kn_vs_random_ratio_ci"))]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
