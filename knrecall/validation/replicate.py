"""Replication across worlds: each validation figure per world seed and across seeds (`snakemake validate_worlds`).

A bootstrap CI inside one world does not cover the variation between worlds (a different graph, corpus and trained
model). `replicate` takes, per seed, that world's `recall.json` and `world.json` and reports every figure per seed
and across seeds: mean, min, max, sd, and how many seeds lie above and below the figure's sign reference (0.5 for an
AUC, 0 for a correlation or a difference). A figure *agrees* when every seed where it is defined lies strictly on
the same side of its reference, and is *robust* only when it agrees and is defined in every seed. Level figures
(shares, mean scores) have no reference: they get the spread only.

Figures read (each may be missing or null in some seed; a missing key counts as undefined there, never as an error):

- `models.<m>.scoreboard.rows[]`: every numeric figure of a row (`specificity_auc`, `causal_spearman`,
  `break_auc`, `pathway_auc`, `sc_planted`, `sc_composed`, `sc_difference`, ...), keyed by condition, hop, variant
  and position, with the row's `<figure>_ci` per seed; the same for `scoreboard.subject_site.rows[]` (source
  `subject_site`) and `scoreboard.subject_site.answer_site_rows[]` (source `subject_site_usual`);
- `models.<m>.scoreboard.rule`: the variant x position the pre-registered rule chose in each seed;
- `models.<m>.validation.<condition>`: `sc_shortcut_planted`, `sc_composed` and their difference (CI
  `sc_difference_ci`), `delta<h>_heldout_bridge`, `delta<h>_heldout_subject` and their difference (CI
  `delta<h>_difference_ci`);
- world.json `pathways.<condition>`: the shares of pathway-revealing items answered by composition, by the
  conflicting shortcut, or neither, and composed - shortcut.

Pure functions on dicts (no torch, no polars): the CLI (`knrecall validate-worlds`) reads and writes the files.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

VERSION = 2  # the workflow passes it in params: bump when a change alters the aggregate

KEY_FIELDS = ("source", "condition", "hop", "variant", "position", "figure")
ROBUST_TEXT = ("A figure is robust only when it is defined in every seed and every seed lies strictly on the same "
               "side of its reference (0.5 for an AUC, 0 for a correlation or a difference); it agrees when every "
               "seed where it is defined does. Figures without a reference (shares, mean scores) get the spread only.")


def reference(figure: str) -> float | None:
    """The sign reference of a figure: 0.5 for AUCs, 0 for correlations and differences, None for level figures."""
    if figure.endswith("_auc") or figure == "auc":
        return 0.5
    if figure.endswith(("spearman", "correlation")) or "difference" in figure or "_minus_" in figure:
        return 0.0
    return None


def _numeric(value: Any) -> bool:
    """A figure's value: a number (NaN and infinities count as undefined) or None; not a label, list or flag."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval(value: Any) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = _number(value[0]), _number(value[1])
        if low is not None and high is not None:
            return [low, high]
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _model_entry(recall: dict, model: str | None) -> dict:
    models = _dict(_dict(recall).get("models"))
    if model is not None:
        return _dict(models.get(model))
    return _dict(next(iter(models.values()), {})) if models else {}


def _hop(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def seed_params(config: dict[str, Any], seed: int, model: str, model_spec: dict[str, Any]) -> dict[str, Any]:
    """The parameters of one world seed's nested run: the run's configuration with `seed` replaced and `models`
    only the world model (`model`: its name, `model_spec`: its entry)."""
    return {**config, "seed": seed, "models": {model: model_spec}}


# ------------------------------------------------------------------------------------------- collect per seed
def _scoreboard_values(entry: dict) -> dict[tuple, tuple[float | None, list[float] | None]]:
    out: dict[tuple, tuple[float | None, list[float] | None]] = {}
    board = _dict(entry.get("scoreboard"))
    site = _dict(board.get("subject_site"))
    for source, rows in (("scoreboard", board.get("rows")), ("subject_site", site.get("rows")),
                         ("subject_site_usual", site.get("answer_site_rows"))):
        out.update(_row_values(source, rows))
    return out


def _row_values(source: str, rows: Any) -> dict[tuple, tuple[float | None, list[float] | None]]:
    out: dict[tuple, tuple[float | None, list[float] | None]] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        ident = (source, row.get("condition"), _hop(row.get("hop")), row.get("variant"), row.get("position"))
        for name, value in row.items():
            if name in KEY_FIELDS or name.startswith("n_") or name.endswith("_ci"):
                continue
            if not _numeric(value):
                continue  # not a figure (a label, a list)
            out[(*ident, name)] = (_number(value), _interval(row.get(f"{name}_ci")))
    return out


def _difference(a: Any, b: Any) -> float | None:
    a, b = _number(a), _number(b)
    return None if a is None or b is None else a - b


def _validation_values(entry: dict) -> dict[tuple, tuple[float | None, list[float] | None]]:
    out: dict[tuple, tuple[float | None, list[float] | None]] = {}
    for condition, v in _dict(entry.get("validation")).items():
        if not isinstance(v, dict):
            continue
        base = ("validation", condition)
        for name in ("sc_shortcut_planted", "sc_composed"):
            if name in v:
                out[(*base, None, None, None, name)] = (_number(v[name]), None)
        if "sc_shortcut_planted" in v or "sc_composed" in v or "sc_difference_ci" in v:
            out[(*base, None, None, None, "sc_difference")] = (
                _difference(v.get("sc_shortcut_planted"), v.get("sc_composed")), _interval(v.get("sc_difference_ci")))
        for hop in (1, 2):
            bridge, subject = f"delta{hop}_heldout_bridge", f"delta{hop}_heldout_subject"
            for name in (bridge, subject):
                if name in v:
                    out[(*base, hop, None, None, name)] = (_number(v[name]), None)
            if bridge in v or subject in v or f"delta{hop}_difference_ci" in v:
                out[(*base, hop, None, None, f"delta{hop}_difference")] = (
                    _difference(v.get(bridge), v.get(subject)), _interval(v.get(f"delta{hop}_difference_ci")))
    return out


def _pathway_values(world: dict) -> dict[tuple, tuple[float | None, list[float] | None]]:
    out: dict[tuple, tuple[float | None, list[float] | None]] = {}
    for condition, p in _dict(_dict(world).get("pathways")).items():
        if not isinstance(p, dict):
            continue
        base = ("pathways", condition, None, None, None)
        for name, value in p.items():
            if name == "n" or name.startswith("n_") or not _numeric(value):
                continue
            out[(*base, name)] = (_number(value), None)
        if "composed" in p or "shortcut" in p:
            out[(*base, "composed_minus_shortcut")] = (_difference(p.get("composed"), p.get("shortcut")), None)
    return out


def _rule_choice(entry: dict, which: str) -> dict | None:
    choice = _dict(_dict(entry.get("scoreboard")).get("rule")).get(which)
    if not isinstance(choice, dict) or "variant" not in choice or "position" not in choice:
        return None
    return {"variant": choice["variant"], "position": choice["position"]}


# ------------------------------------------------------------------------------------------------- aggregate
def summarise(values: list[float | None], ref: float | None) -> dict[str, Any]:
    """Across-seed statistics of one figure (`values` in seed order; None where undefined)."""
    defined = [v for v in values if v is not None]
    n = len(defined)
    mean = sum(defined) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in defined) / (n - 1)) if n >= 2 else None
    out: dict[str, Any] = {"mean": _round(mean), "min": min(defined) if n else None,
                           "max": max(defined) if n else None, "sd": _round(sd), "n_defined": n, "n_seeds": len(values), "reference": ref}
    if ref is None:
        out.update(n_above=None, n_below=None, agree=None, robust=None, sign=None)
        return out
    above = sum(v > ref for v in defined)
    below = sum(v < ref for v in defined)
    agree = (above == n or below == n) if n else None
    out.update(n_above=above, n_below=below, agree=agree, robust=bool(agree) and n == len(values),
               sign=None if not agree else ("above" if above else "below"))
    return out


SOURCES = ("scoreboard", "subject_site", "subject_site_usual", "validation", "pathways")


def replicate(per_seed: dict[int, dict], model: str | None = None) -> dict[str, Any]:
    """Aggregate the per-seed metrics: `per_seed` maps a seed to {"recall": recall.json, "world": world.json}
    (either may be missing or partial). `model` is the model's name in recall.json (default: its first model)."""
    seeds = sorted(per_seed)
    collected: dict[int, dict[tuple, tuple]] = {}
    for seed in seeds:
        files = _dict(per_seed[seed])
        entry = _model_entry(_dict(files.get("recall")), model)
        collected[seed] = {**_scoreboard_values(entry), **_validation_values(entry),
                           **_pathway_values(_dict(files.get("world")))}
    # in the order the files give them (the first seed's first), grouped by source
    keys = sorted(dict.fromkeys(key for values in collected.values() for key in values),
                  key=lambda key: SOURCES.index(key[0]))
    figures = []
    for key in keys:
        values = [collected[seed].get(key, (None, None))[0] for seed in seeds]
        cis = [collected[seed].get(key, (None, None))[1] for seed in seeds]
        ref = reference(key[-1])
        row: dict[str, Any] = dict(zip(KEY_FIELDS, key))
        row["per_seed"] = {str(seed): value for seed, value in zip(seeds, values)}
        row.update(summarise(values, ref))
        if any(ci is not None for ci in cis):
            row["ci_per_seed"] = {str(seed): ci for seed, ci in zip(seeds, cis)}
            if ref is not None:  # seeds whose own CI lies wholly on one side of the reference
                row["n_ci_above"] = sum(ci is not None and ci[0] > ref for ci in cis)
                row["n_ci_below"] = sum(ci is not None and ci[1] < ref for ci in cis)
        figures.append(row)

    entries = {seed: _model_entry(_dict(_dict(per_seed[seed]).get("recall")), model) for seed in seeds}
    chosen = {str(seed): _rule_choice(entries[seed], "chosen") for seed in seeds}
    configured = {str(seed): _rule_choice(entries[seed], "configured") for seed in seeds}
    made = [c for c in chosen.values() if c is not None]
    same = None if not made else (len(made) == len(seeds) and all(c == made[0] for c in made))
    signed = [f for f in figures if f["reference"] is not None]
    by_source = {}
    for source in dict.fromkeys(f["source"] for f in signed):
        rows = [f for f in signed if f["source"] == source]
        by_source[source] = {"n_figures": len(rows), "n_agree": sum(bool(f["agree"]) for f in rows),
                             "n_robust": sum(bool(f["robust"]) for f in rows)}
    return {
        "version": VERSION,
        "model": model,
        "seeds": seeds,
        "n_seeds": len(seeds),
        "robust_means": ROBUST_TEXT,
        "summary": {"n_figures": len(signed), "n_agree": sum(bool(f["agree"]) for f in signed),
                    "n_robust": sum(bool(f["robust"]) for f in signed), "by_source": by_source},
        "rule_choices": chosen,
        "rule_configured": configured,
        "same_choice_every_seed": same,
        "figures": figures,
    }


# ------------------------------------------------------------------------------------------------------ HTML
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #212529; }
h2 { border-bottom: 1px solid #dee2e6; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #dee2e6; padding: 0.25em 0.5em; text-align: right; }
th { background: #f1f3f5; } td.key, th.key { text-align: left; } .note { font-size: 0.9em; color: #495057; }
nav a { margin-right: 1em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(headers: list[str], rows: Iterable[list[str]], keys: int = 1) -> str:
    head = "".join(f'<th{" class=key" if i < keys else ""}>{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=key" if i < keys else ""}>{cell}</td>' for i, cell in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flag(value: Any) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _figure_table(rows: list[dict], seeds: list[str]) -> str:
    ref = rows[0]["reference"]
    keyed = [c for c in ("condition", "hop", "variant", "position") if any(r.get(c) is not None for r in rows)]
    headers = keyed + [f"seed {s}" for s in seeds] + ["mean", "min – max", "sd"]
    if ref is not None:
        headers += [f"above {ref:g} / below / defined", "agree", "robust"]
    body = []
    for r in rows:
        cells = [_e(r.get(c)) for c in keyed] + [_num(r["per_seed"].get(s)) for s in seeds]
        cells += [_num(r["mean"]), f"{_num(r['min'])} – {_num(r['max'])}", _num(r["sd"])]
        if ref is not None:
            cells += [f"{r['n_above']} / {r['n_below']} / {r['n_defined']} of {r['n_seeds']}", _flag(r["agree"]),
                      f"<b>{_flag(r['robust'])}</b>" if r["robust"] else _flag(r["robust"])]
        body.append(cells)
    return _table(headers, body, keys=len(keyed))


def render_html(result: dict[str, Any]) -> str:
    """A small standalone page: a table per figure (per seed, mean, min–max, sign agreement, robust), the rule's
    choice per seed, and the pathway shares per seed."""
    seeds = [str(s) for s in result.get("seeds", [])]
    figures = result.get("figures", [])
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in figures:
        groups.setdefault((f["source"], f["figure"]), []).append(f)
    s = result.get("summary", {})
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>knrecall: replication across worlds"
             f"</title><style>{STYLE}</style></head><body>",
             "<h1>Replication across worlds</h1>",
             f'<p class="note">Model <code>{_e(result.get("model") or "(first in recall.json)")}</code>, '
             f"{len(seeds)} worlds (seeds {_e(', '.join(seeds))}), each generated, trained and measured on its own "
             f"(<code>results/validate/seed-N/</code>). {_e(result.get('robust_means', ROBUST_TEXT))}</p>",
             f'<p>Figures with a sign reference: {_e(s.get("n_figures"))}; every defined seed agrees: '
             f'{_e(s.get("n_agree"))}; robust: <b>{_e(s.get("n_robust"))}</b>.</p>']
    nav = [f'<a href="#{_e(src)}-{_e(fig)}">{_e(src)}: {_e(fig)}</a>' for src, fig in groups]
    parts.append("<nav>" + " ".join(nav) + "</nav>")

    parts.append("<h2>The rule's choice per seed</h2>")
    chosen, configured = result.get("rule_choices", {}), result.get("rule_configured", {})
    rows = [[_e(seed), _e(_choice(chosen.get(seed))), _e(_choice(configured.get(seed)))] for seed in seeds]
    parts.append(_table(["seed", "chosen variant × position", "configured"], rows))
    parts.append(f'<p>Same choice in every seed: <b>{_flag(result.get("same_choice_every_seed"))}</b></p>')

    titles = {"scoreboard": "Scoreboard", "subject_site": "Hop-1 KNs found at the subject",
              "subject_site_usual": "The usual hop-1 KNs on the subject-site items",
              "validation": "Ground-truth validation", "pathways": "Pathway shares"}
    for (source, figure), rows in groups.items():
        robust = sum(bool(r.get("robust")) for r in rows)
        tail = f" ({robust} of {len(rows)} robust)" if rows[0]["reference"] is not None else " (no sign reference)"
        parts.append(f'<h2 id="{_e(source)}-{_e(figure)}">{_e(titles.get(source, source))}: '
                     f"<code>{_e(figure)}</code>{_e(tail)}</h2>")
        parts.append(_figure_table(rows, seeds))
    if not figures:
        parts.append('<p class="note">No figures: the per-seed metrics files hold none of the keys read.</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _choice(choice: Any) -> str:
    return "–" if not isinstance(choice, dict) else f"{choice.get('variant')} × {choice.get('position')}"
