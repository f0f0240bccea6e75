"""The report page: plain HTML with inline CSS, the figures beside it, no scripts from anywhere else.

A small inline script checks, once the page has loaded, that every image decoded, and writes the result into
`#image-check` (`data-broken` = the number of broken images); the Chromium test reads it.
"""

from __future__ import annotations

import html
import json
from typing import Any

from knrecall import __version__

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #212529; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #dee2e6; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #dee2e6; padding: 0.25em 0.5em; text-align: right; }
th { background: #f1f3f5; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #f1f3f5; }
figcaption { font-size: 0.85em; color: #495057; max-width: 900px; }
.manifest td { text-align: left; } .note { font-size: 0.9em; color: #495057; }
nav a { margin-right: 1em; }
"""

CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  var box = document.getElementById("image-check");
  box.setAttribute("data-images", String(images.length));
  box.setAttribute("data-broken", String(broken.length));
  box.textContent = broken.length ? "broken images: " + broken.map(function (i) { return i.src; }).join(", ")
                                  : images.length + " images loaded";
});
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _f(value: Any, ci: Any = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if ci:
        text += f" <small>[{ci[0]:.{digits - 1}f}, {ci[1]:.{digits - 1}f}]</small>"
    return text


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # key-value tables have no header row
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _figure(src: str, caption: str) -> str:
    return f'<figure><img src="{_e(src)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _manifest(section: dict[str, Any], run: dict[str, Any], dataset: str) -> str:
    m = section["manifest"]
    model = m.get("model", {})
    libs = ", ".join(f"{k} {v}" for k, v in sorted(m.get("libraries", {}).items()))
    rows = [["knrecall version", _e(__version__)], ["model", _e(model.get("path"))],
            ["revision", _e(model.get("revision") or "–")], ["dtype", _e(model.get("dtype"))],
            ["dataset", _e(dataset)], ["items", _e(m.get("n_items"))],
            ["parameters fingerprint", f"<code>{_e(run['fingerprint'])}</code> (sha256 of the parameters, below)"],
            ["libraries", _e(libs)], ["device", _e(m.get("device"))], ["report date", _e(run["date"])]]
    return _table(["", ""], rows, "manifest")


def _table4(section: dict[str, Any]) -> str:
    rows = []
    for condition, m in section["recall"].get("conditions", {}).items():
        rows.append([_e(condition), _e(m.get("n_items")), _f(m.get("accuracy"), m.get("accuracy_ci"))]
                    + [_f(m.get(k), m.get(f"{k}_ci")) for k in ("TT", "TF", "FT", "FF", "MH", "SC")]
                    + [_f(m.get(f"delta{h}_mean"), m.get(f"delta{h}_mean_ci")) for h in (1, 2)]
                    + [_e(m.get("n_no_kns")), _e(m.get("n_undecided")), _e(m.get("n_skipped", 0))])
    return _table(["condition", "n", "accuracy", "TT", "TF", "FT", "FF", "MH", "SC", "Δ1 mean", "Δ2 mean",
                   "no KNs", "undecided", "skipped"], rows)


SKIP_PHASES = {"answer": "answer", "attribute": "attribution", "measure": "KN activations",
               "causal": "causal effects", "intervene": "interventions", "subject_site": "subject-site variant"}


def _skipped(section: dict[str, Any]) -> str:
    """What every phase left out of this model's run, per condition and reason, and the first examples."""
    rows = []
    for phase, block in section.get("skipped", {}).items():
        for condition, reasons in (block.get("by_condition") or {}).items():
            rows += [[_e(SKIP_PHASES.get(phase, phase)), _e(condition), _e(reason), _e(n)]
                     for reason, n in reasons.items()]
        rows += [[_e(SKIP_PHASES.get(phase, phase)), "single-hop prompts", _e(reason), _e(n)]
                 for reason, n in (block.get("single_hop") or {}).items()]
    if not rows:
        return '<p class="note">Nothing was skipped: every item was asked under every condition.</p>'
    note = ('<p class="note">Per-item problems cost one skipped row with a reason, not the run: an item without a '
            "conflict candidate (neither its own counterfactual rewrite nor another object of the relation), "
            "without enough few-shot exemplars, with an answer the tokenizer cannot split after the prompt, or with a "
            "prompt longer than this model's context. Two-hop items count per condition; skipped items have no "
            "row under that condition in any figure above. The answering phase's list, one row per skipped prompt "
            f"with its reason: <code>results/predictions/{_e(section['name'])}.skipped.parquet</code>.</p>")
    examples = section.get("skipped_examples") or []
    listed = ""
    if examples:
        listed = ("<details><summary>The answering phase's first skipped prompts</summary>"
                  + _table(["item", "prompt", "condition", "reason", "detail"],
                           [[_e(x.get("case_id")), _e(x.get("kind") if x.get("kind") == "two_hop" else
                                                      f"{x.get('kind')} #{x.get('paraphrase')}"),
                             _e(x.get("condition") or "–"), _e(x.get("reason")), _e(x.get("detail"))]
                            for x in examples]) + "</details>")
    return note + _table(["phase", "condition", "reason", "items"], rows) + listed


def _conflict(section: dict[str, Any]) -> str:
    rows = []
    stats = {(r["condition"], r["hop"]): r for r in section["recall_delta_stats"]}
    for condition, m in section["by_condition"].items():
        if not condition.startswith("conflict"):
            continue
        rows.append([_e(condition), _e(m.get("n")), _f(m.get("context_from_rewrite")), _f(m.get("follows_context")),
                     _f(m.get("follows_memory")), _f(m.get("follows_neither")),
                     _f(stats.get((condition, 1), {}).get("mean")), _f(stats.get((condition, 2), {}).get("mean"))])
    if not rows:
        return '<p class="note">No conflict condition was answered (answer.conditions).</p>'
    return ('<p class="note">The conflicting entity is the record\'s own counterfactual rewrite where it has one '
            "(MQuAKE), else another object of the same relation in the dataset.</p>"
            + _table(["condition", "n", "context from the record's rewrite", "follows context", "follows memory",
                      "neither", "Δ1 mean", "Δ2 mean"], rows))


def _interventions(section: dict[str, Any]) -> str:
    entry = section["interventions"]
    if not entry:
        return '<p class="note">No intervention results.</p>'
    rows = []
    for condition, by_name in entry.get("conditions", {}).items():
        base = by_name.get("base", {})
        rows.append([_e(condition), "base", _e(base.get("n_items")), _f(base.get("accuracy"), base.get("accuracy_ci")),
                     "", "", "", "", ""])
        for name, m in by_name.items():
            if name == "base":
                continue
            r = m.get("random", {})
            rows.append([_e(condition), _e(name), _e(m.get("n_items")), _f(m.get("accuracy")),
                         _f(m.get("delta_accuracy"), m.get("delta_accuracy_ci")),
                         _f(m.get("delta_gold_prob"), m.get("delta_gold_prob_ci")),
                         _f(r.get("delta_accuracy"), r.get("delta_accuracy_ci")),
                         _f(r.get("delta_gold_prob"), r.get("delta_gold_prob_ci")),
                         _f(m.get("kn_vs_random_ratio"), m.get("kn_vs_random_ratio_ci"), 2)])
    note = (f'<p class="note">Position policy: <code>{_e(entry.get("policy"))}</code>; items intervened on: '
            f'{_e(entry.get("n_items_intervened"))} of {_e(entry.get("n_items"))}.</p>')
    return note + _table(["condition", "intervention", "n", "accuracy", "Δ accuracy", "Δ gold p",
                          "random Δ accuracy", "random Δ gold p", "KN / random (size of Δp)"], rows)


def _validation(section: dict[str, Any]) -> str:
    rows = []
    for condition, v in (section["recall"].get("validation") or {}).items():
        rows.append([_e(condition), f"{_f(v.get('sc_shortcut_planted'))} ({_e(v.get('n_shortcut_planted'))})",
                     f"{_f(v.get('sc_composed'))} ({_e(v.get('n_composed'))})", _ci(v.get("sc_difference_ci")),
                     _f(v.get("delta1_heldout_bridge")), _f(v.get("delta1_heldout_subject")),
                     _ci(v.get("delta1_difference_ci")), _f(v.get("delta2_heldout_bridge")),
                     _f(v.get("delta2_heldout_subject")), _ci(v.get("delta2_difference_ci"))])
    return _table(["condition", "SC planted (n)", "SC composed (n)", "difference CI", "Δ1 held-out bridge",
                   "Δ1 held-out subject", "difference CI", "Δ2 held-out bridge", "Δ2 held-out subject",
                   "difference CI"], rows)


def _verdict(row: dict[str, Any], name: str, reference: float) -> str:
    """"yes" when the figure's 95 % CI lies above the reference, "no" when it reaches it or lies below, "–" when
    undefined."""
    ci = row.get(f"{name}_ci")
    if not ci:
        return "–"
    return "yes" if ci[0] > reference else "no"


def _trust(section: dict[str, Any]) -> str:
    """The section "Can these numbers be trusted?": the scoreboard of the reported measurement and the paper's
    reading, the rule's choice, the per-item causal effects, the pathways, and the whole scoreboard folded."""
    recall = section["recall"]
    board = recall.get("scoreboard") or {}
    if not board.get("rows"):
        return '<p class="note">No scoreboard (results/recall/&lt;model&gt;/scoreboard.json is empty).</p>'
    configured = recall.get("measurement") or board.get("rule", {}).get("configured") or {}
    chosen = board.get("rule", {}).get("chosen") or {}
    paper = recall.get("paper_reading", {})
    parts = ['<p class="note">A recall decision is only worth reporting if the KN score behind it means recall. '
             "<b>Specificity</b>: an item's own Δ against the same KN set on items that do not involve the fact "
             "(AUC; 0.5 = no better than unrelated prompts). <b>Causal agreement</b>: does Δ predict what "
             "suppressing the hop's KNs at every position does to the gold answer (rank correlation with the drop in "
             "gold probability; AUC of Δ for answers that break vs survive)? <b>Ground truth</b> (world only): Δ of "
             "pathway-revealing items answered through the bridge vs through the planted conflicting shortcut (AUC), "
             "and SC on planted-shortcut vs composed items. 95 % bootstrap CIs; \"supported\" = the CI lies above "
             "the reference (0.5 for AUCs, 0 for correlations and differences). Under chain of thought a hop's "
             "reasoning step exists only where the chain names its entity (else Δ is read at the last prompt token), "
             "so at <code>step</code> a pathway AUC also reflects whether the chain named it: a shortcut answer "
             "rarely names o2 after the bridge.</p>",
             f'<p class="note">Reported measurement (recall.delta × recall.position): <code>{_e(configured.get("variant"))}'
             f' @ {_e(configured.get("position"))}</code>. The rule ({_e(board.get("rule", {}).get("text"))}) chooses '
             f'<code>{_e(chosen.get("variant"))} @ {_e(chosen.get("position"))}</code> on this run. The paper\'s reading '
             f'is <code>{_e(paper.get("variant"))} @ {_e(paper.get("position"))}</code>.</p>']
    paper_measure = {"variant": paper.get("variant"), "position": paper.get("position")}
    shown = [("reported" if paper_measure != dict(configured) else "reported = paper's reading", configured)]
    if paper_measure != dict(configured):
        shown.append(("paper's reading", paper_measure))
    rows = []
    for label, which in shown:
        for r in board["rows"]:
            if r["variant"] != which.get("variant") or r["position"] != which.get("position"):
                continue
            rows.append([_e(label), _e(r["condition"]), _e(r["hop"]), _f(r.get("specificity_auc"), r.get("specificity_auc_ci")),
                         _f(r.get("causal_spearman"), r.get("causal_spearman_ci")),
                         _f(r.get("break_auc"), r.get("break_auc_ci")), _e(f"{r.get('n_breaks')}/{r.get('n_causal')}"),
                         _f(r.get("pathway_auc"), r.get("pathway_auc_ci")),
                         _e(f"{r.get('n_pathway_composed')}/{r.get('n_pathway_shortcut')}"),
                         _f(r.get("sc_difference"), r.get("sc_difference_ci")),
                         _e(_verdict(r, "causal_spearman", 0.0)), _e(_verdict(r, "pathway_auc", 0.5))])
    parts.append(_table(["measurement", "condition", "hop", "specificity AUC", "causal ρ", "break AUC",
                         "broken / items", "pathway AUC", "composed / shortcut", "SC planted − composed",
                         "causal: supported", "ground truth: supported"], rows))
    paper_rows = [[_e(c), _f(recall.get("conditions", {}).get(c, {}).get("MH"), recall.get("conditions", {}).get(c, {}).get("MH_ci")),
                   _f(m.get("MH"), m.get("MH_ci")), _f(recall.get("conditions", {}).get(c, {}).get("SC"),
                                                       recall.get("conditions", {}).get(c, {}).get("SC_ci")),
                   _f(m.get("SC"), m.get("SC_ci"))] for c, m in paper.get("conditions", {}).items()]
    parts += ["<h4>MH / SC: the reported measurement and the paper's reading</h4>",
              _table(["condition", "MH (reported)", "MH (paper)", "SC (reported)", "SC (paper)"], paper_rows)]
    causal_rows = [[_e(c), _e(h[-1]), _e(e.get("n_items")), _f(e.get("effect_kn")), _f(e.get("effect_random")),
                    _f(e.get("breaks")), _f(e.get("breaks_random"))]
                   for c, hops in board.get("causal", {}).items() for h, e in hops.items()]
    parts += ["<h4>Per-item causal effects (means; per item in results/interventions/&lt;model&gt;/causal.parquet)</h4>",
              _table(["condition", "hop", "items", "Δ gold p, KNs suppressed", "Δ gold p, random neurons",
                      "answers broken (KNs)", "answers broken (random)"], causal_rows)]
    if board.get("pathways"):
        parts += ["<h4>Pathway-revealing items: which pathway the answer took</h4>",
                  _table(["condition", "composed (o2)", "shortcut (o2′)", "neither"],
                         [[_e(c), _e(v.get("composed")), _e(v.get("shortcut")), _e(v.get("neither"))]
                          for c, v in board["pathways"].items()])]
    parts.append(_subject_site(board.get("subject_site") or {}, configured))
    ranking = board.get("rule", {}).get("ranking", [])
    parts.append("<details><summary>The rule's ranking and the whole scoreboard</summary>"
                 + _table(["variant", "position", "mean causal ρ (rule conditions)"],
                          [[_e(r["variant"]), _e(r["position"]), _f(r["score"])] for r in ranking])
                 + _table(["condition", "hop", "variant", "position", "specificity AUC", "causal ρ", "break AUC",
                           "pathway AUC", "SC planted − composed"],
                          [[_e(r["condition"]), _e(r["hop"]), _e(r["variant"]), _e(r["position"]),
                            _f(r.get("specificity_auc"), r.get("specificity_auc_ci")),
                            _f(r.get("causal_spearman"), r.get("causal_spearman_ci")),
                            _f(r.get("break_auc"), r.get("break_auc_ci")), _f(r.get("pathway_auc"), r.get("pathway_auc_ci")),
                            _f(r.get("sc_difference"), r.get("sc_difference_ci"))] for r in board["rows"]])
                 + "</details>")
    return "\n".join(parts)


def _subject_site(site: dict[str, Any], configured: dict[str, Any]) -> str:
    """Hop 1 with KNs attributed at the subject vs at the answer position, on the same sampled items: the reported
    variant at every position, all variants folded."""
    if not site.get("rows"):
        return ""

    def line(label: str, r: dict[str, Any]) -> list[str]:
        return [_e(label), _e(r["condition"]), _e(r["variant"]), _e(r["position"]),
                _f(r.get("specificity_auc"), r.get("specificity_auc_ci")),
                _f(r.get("causal_spearman"), r.get("causal_spearman_ci")),
                _f(r.get("break_auc"), r.get("break_auc_ci")),
                _f(r.get("pathway_auc"), r.get("pathway_auc_ci")),
                _e(_verdict(r, "causal_spearman", 0.0)), _e(_verdict(r, "pathway_auc", 0.5))]

    both = [("subject", r) for r in site["rows"]] + [("answer position", r) for r in site.get("answer_site_rows", [])]
    headers = ["KNs found at", "condition", "variant", "position", "specificity AUC", "causal ρ", "break AUC",
               "pathway AUC", "causal: supported", "ground truth: supported"]
    reported = [line(label, r) for label, r in both if r["variant"] == configured.get("variant")]
    return (f"<h4>Hop 1 with KNs found at the subject ({_e(site.get('items'))} sampled items, "
            f"{_e(site.get('pathway_items'))} pathway-revealing; {_e(site.get('kns_per_fact_mean'))} KNs per fact)</h4>"
            '<p class="note">The hop-1 facts attributed again, at the subject\'s last token of the single-hop prompts '
            "instead of the answer position, and compared with the usual hop-1 KNs on the same items "
            "(results/recall/&lt;model&gt;/subject_site.json).</p>"
            + _table(headers, reported)
            + "<details><summary>Every variant</summary>"
            + _table(headers, [line(label, r) for label, r in both]) + "</details>")


def _ci(ci: Any) -> str:
    return "–" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _attribution(section: dict[str, Any]) -> str:
    a = section["attribution"]
    k = a.get("kns_per_fact", {})
    rows = [["neuron definition", _e(a.get("thresholds", {}).get("neuron", "ffn_input"))],
            ["prompts attributed", _e(a.get("prompts_attributed"))], ["facts", _e(a.get("facts"))],
            ["KNs per fact (mean / median / min / max)",
             f"{_f(k.get('mean'), None, 1)} / {_e(k.get('median'))} / {_e(k.get('min'))} / {_e(k.get('max'))}"],
            ["facts without KNs", _e(k.get("facts_without_kns"))],
            ["completeness error median / p95", f"{_f(a.get('completeness_error_median'), None, 4)} / "
                                                f"{_f(a.get('completeness_error_p95'), None, 4)}"],
            ["seconds per prompt", _f(a.get("seconds_per_prompt"), None, 4)]]
    return _table(["", ""], rows, "manifest")


def render_page(sections: list[dict[str, Any]], world: dict[str, Any] | None, params: dict[str, Any], dataset: str,
                run: dict[str, Any]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>knrecall report</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>knrecall report</h1>",
             '<p class="note">Do language models recall the facts behind a two-hop question while they answer it? '
             "Knowledge neurons (integrated gradients) of each single-hop fact, watched and intervened on during the "
             "two-hop questions. Definitions: the README.</p>",
             '<div id="image-check" data-broken="unknown">images not checked yet</div>',
             "<nav>" + "".join(f'<a href="#model-{_e(s["name"])}">{_e(s["name"])}</a>' for s in sections) + "</nav>"]
    if len(sections) > 1:
        rows = []
        for s in sections:
            for condition, m in s["recall"].get("conditions", {}).items():
                rows.append([_e(s["name"]), _e(condition), _f(m.get("accuracy")), _f(m.get("MH"), m.get("MH_ci")),
                             _f(m.get("SC"), m.get("SC_ci"))])
        parts += ["<h2>Across models</h2>", _table(["model", "condition", "accuracy", "MH", "SC"], rows)]
    for s in sections:
        anchor = f"model-{_e(s['name'])}"
        figs = dict((src.rsplit("/", 1)[1][:-4], (src, cap)) for src, cap in s["figures"])
        parts += [f'<h2 id="{anchor}">Model {_e(s["name"])}</h2>', "<h3>Run manifest</h3>", _manifest(s, run, dataset),
                  "<h3>Accuracy</h3>", _figure(*figs["accuracy"]),
                  "<h3>Knowledge neurons</h3>", _attribution(s), _figure(*figs["kn_layers"]), _figure(*figs["kn_counts"]),
                  "<h3>Recall: KN scores per condition</h3>", _figure(*figs["deltas"]),
                  "<h3>Recall categories (the paper's Table 4 layout)</h3>",
                  '<p class="note">MH = TT / (TT + FT): correct answers that recalled both hops; SC = FT / (TT + FT): '
                  "correct answers without recall (shortcuts). Shares with 95 % percentile-bootstrap CIs.</p>",
                  _table4(s), _figure(*figs["categories"]),
                  "<h3>Skipped items</h3>", _skipped(s),
                  "<h3>Conflicting context</h3>", _conflict(s), _figure(*figs["conflict"]),
                  "<h3>Interventions</h3>", _interventions(s), _figure(*figs["interventions"])]
        if s["recall"].get("validation"):
            parts += ["<h3>Ground-truth validation (the world)</h3>",
                      '<p class="note">The world knows which items had a planted shortcut sentence and which had to be '
                      "composed, and which bridges and subjects were held out. SC should be higher on planted-shortcut "
                      "items than on composed ones if the recall decision detects shortcuts. Differences with "
                      "independent-groups bootstrap 95 % CIs.</p>", _validation(s)]
        parts += ["<h3>Can these numbers be trusted?</h3>", _trust(s), _figure(*figs["scoreboard"]),
                  _figure(*figs["positions"]), _figure(*figs["profile"])]
        parts += ["<h3>IG diagnostics</h3>", _figure(*figs["completeness"])]
    if world:
        parts += ["<h2>The world model</h2>", f"<pre>{_e(json.dumps(world, indent=2))}</pre>"]
    parts += ["<h2>Parameters</h2>", f"<pre>{_e(json.dumps(params, indent=2))}</pre>",
              f"<script>{CHECK_SCRIPT}</script></body></html>"]
    return "\n".join(parts)
