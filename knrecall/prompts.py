"""Prompt rendering per condition: the one place that turns a question into a model input.

Templates come from `params.yaml` (`prompts:`), keyed by condition name; `{question}` marks where the question
goes. Only `direct` exists so far; other conditions (chain of thought, conflicting context) add their templates here.
"""

from __future__ import annotations

from knrecall.errors import KnrecallError


def render_prompt(templates: dict[str, str], condition: str, question: str) -> str:
    try:
        template = templates[condition]
    except KeyError:
        raise KnrecallError(f"no prompt template for condition '{condition}' (known: {', '.join(sorted(templates))})") from None
    return template.format(question=question)
