"""Skip, count, continue: per-item problems cost one skipped row with a reason, never a model's whole job.

A problem of ONE item (or one prompt) — no conflict candidate, too few few-shot exemplars, an answer the tokenizer
cannot split after its prompt, a prompt longer than this model's context — is recorded as a `Skip`: one warning
line in the rule's log naming the item and the reason, one row in the phase's skipped list, and counts in the
metrics (per condition for two-hop questions). The other items go on. File-level problems (a malformed dataset,
bad parameters, a missing model, a model whose tokenizer lacks a chat template it was asked to use) still stop at
once with one message, and so does a model for which every two-hop question was skipped (nothing would be left to
measure: the one message then names the reasons).

Reasons (`REASONS`, a closed vocabulary so the counts can be compared across runs):

- `no_conflict_candidate`: conflict_hop1/2 has neither the record's own counterfactual rewrite nor another object
  of the same relation in the dataset;
- `no_exemplars`: few_shot_cot has fewer usable exemplars than `answer.few_shot_exemplars`;
- `answer_tokens`: the answer cannot be tokenized after its prompt (empty, a special or unknown token, or the
  tokenizer merges across the prompt/answer boundary; `knrecall.targets`);
- `prompt_too_long`: the prompt (with the tokens to generate, or the answer) does not fit this model's context;
- `subject_not_found`: the subject-site variant (`knrecall.validation.subject_site`) does not find the subject's
  tokens in a single-hop prompt.

Pure Python (no torch): the metrics and report code read these records too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

log = logging.getLogger("knrecall.skips")

REASONS = ("no_conflict_candidate", "no_exemplars", "answer_tokens", "prompt_too_long", "subject_not_found")
PHASES = ("answer", "attribute", "measure", "causal", "intervene", "subject_site")

SKIPPED_SCHEMA = pa.schema(
    [
        pa.field("case_id", pa.string()),  # the item (null for a fact's prompt skipped by attribution)
        pa.field("kind", pa.string(), nullable=False),  # two_hop | hop1 | hop2 | fact
        pa.field("paraphrase", pa.int16()),  # single-hop prompts: index into fact{1,2}_query
        pa.field("condition", pa.string()),  # two-hop questions: the prompt condition
        pa.field("fact_id", pa.string()),  # attribution / baselines: the fact
        pa.field("phase", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),  # the message, naming what did not fit
    ]
)


@dataclass(frozen=True)
class Skip:
    phase: str
    reason: str
    detail: str
    case_id: str | None = None
    kind: str = "two_hop"
    paraphrase: int | None = None
    condition: str | None = None
    fact_id: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r} (known: {', '.join(REASONS)})")

    def what(self) -> str:
        if self.kind == "two_hop":
            return f"item '{self.case_id}' under {self.condition}"
        if self.kind == "fact":
            return f"fact {self.fact_id} paraphrase {self.paraphrase}"
        return f"item '{self.case_id}' {self.kind} paraphrase {self.paraphrase}"


def announce(skip: Skip) -> None:
    """The one warning line of a skip, naming the item and the reason."""
    log.warning("skipped %s (%s): %s: %s", skip.what(), skip.phase, skip.reason, skip.detail)


def record(skips: list[Skip] | None, skip: Skip, quiet: bool = False) -> Skip:
    """Log one warning line for `skip` (unless `quiet`: the caller announces it later) and append it to `skips`."""
    if not quiet:
        announce(skip)
    if skips is not None:
        skips.append(skip)
    return skip


def as_dicts(skips: Iterable[Skip]) -> list[dict[str, Any]]:
    """The skips as plain dicts (what output metadata stores)."""
    return [asdict(s) for s in skips]


def from_dicts(rows: Iterable[Mapping[str, Any]]) -> list[Skip]:
    """Skips back from metadata dicts; unknown keys are ignored, so older or newer files still read."""
    fields = set(Skip.__dataclass_fields__)
    return [Skip(**{k: v for k, v in row.items() if k in fields}) for row in rows or ()]


def counts(skips: Iterable[Skip | Mapping[str, Any]]) -> dict[str, Any]:
    """`{"n_skipped", "by_reason", "by_condition": {condition: {reason: n}}, "single_hop": {reason: n}}`:
    two-hop questions count per condition; single-hop and fact prompts under `single_hop`."""
    skips = [s if isinstance(s, Skip) else from_dicts([s])[0] for s in skips]
    by_condition: dict[str, Counter] = {}
    single: Counter = Counter()
    for s in skips:
        if s.kind == "two_hop" and s.condition is not None:
            by_condition.setdefault(s.condition, Counter())[s.reason] += 1
        else:
            single[s.reason] += 1
    return {"n_skipped": len(skips), "by_reason": dict(sorted(Counter(s.reason for s in skips).items())),
            "by_condition": {c: dict(sorted(v.items())) for c, v in by_condition.items()},
            "single_hop": dict(sorted(single.items()))}


def merge_counts(*blocks: Mapping[str, Any] | None) -> dict[str, Any]:
    """Several `counts` blocks (e.g. one per shard) added up."""
    total: dict[str, Any] = counts([])
    for block in blocks:
        if not block:
            continue
        total["n_skipped"] += int(block.get("n_skipped", 0))
        for key in ("by_reason", "single_hop"):
            for reason, n in (block.get(key) or {}).items():
                total[key][reason] = total[key].get(reason, 0) + int(n)
        for condition, reasons in (block.get("by_condition") or {}).items():
            here = total["by_condition"].setdefault(condition, {})
            for reason, n in reasons.items():
                here[reason] = here.get(reason, 0) + int(n)
    total["by_reason"] = dict(sorted(total["by_reason"].items()))
    total["single_hop"] = dict(sorted(total["single_hop"].items()))
    return total


def condition_entry(block: Mapping[str, Any] | None, condition: str) -> dict[str, Any]:
    """`{"n_skipped": n, "skipped": {reason: n}}` of one condition from a `counts` block."""
    reasons = dict(((block or {}).get("by_condition") or {}).get(condition) or {})
    return {"n_skipped": int(sum(reasons.values())), "skipped": reasons}


def table(skips: Iterable[Skip]) -> pa.Table:
    """The skipped table (`SKIPPED_SCHEMA`), one row per skip, in the order they were found."""
    return pa.Table.from_pylist(as_dicts(skips), schema=SKIPPED_SCHEMA)


def metadata(skips: list[Skip]) -> dict[str, Any]:
    """What a phase stores in its outputs' metadata: `skipped` (every record) and `skipped_counts`."""
    return {"skipped": as_dicts(skips), "skipped_counts": counts(skips)}
