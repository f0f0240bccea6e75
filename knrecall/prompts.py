"""Prompt templates: the condition names and their default templates, shared by the parameter model and the phases.

Templates (`DEFAULT_TEMPLATES`, overridable per condition in `params.yaml`'s `prompts` block; `{question}` is the
item's two-hop question):

- `direct`:        "Q: {question} A:"   (exactly what the world model is trained on)
- `zero_shot_cot`: "Q: {question} A: Let's think step by step."
- `few_shot_cot`:  "{exemplars}Q: {question} A:"
- `conflict_hop1` / `conflict_hop2`: "Context: {context} Q: {question} A:"

`EXEMPLAR_TEMPLATE` is one few-shot block; `knrecall.data.conditions` builds its chain and renders every condition.
A single-hop paraphrase is always asked under `direct` (`single_hop_prompt`).
"""

from __future__ import annotations

from collections.abc import Mapping

CONDITIONS = ("direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2")

DEFAULT_TEMPLATES: dict[str, str] = {
    "direct": "Q: {question} A:",
    "zero_shot_cot": "Q: {question} A: Let's think step by step.",
    "few_shot_cot": "{exemplars}Q: {question} A:",
    "conflict_hop1": "Context: {context} Q: {question} A:",
    "conflict_hop2": "Context: {context} Q: {question} A:",
}

EXEMPLAR_TEMPLATE = "Q: {question} A: {chain} So the answer is {answer}.\n"


def single_hop_prompt(question: str, templates: Mapping[str, str] = DEFAULT_TEMPLATES) -> str:
    """The prompt of a single-hop paraphrase: `question` under the `direct` template."""
    return templates["direct"].format(question=question)
