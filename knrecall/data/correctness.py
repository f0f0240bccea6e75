"""Answer correctness on text (DESIGN.md §4): the answer span of a generation and whether it names the gold answer.
Pure string functions (no torch), shared by the answering phase and every statistic computed from its outputs.

- `extract_span`: without chain of thought, the generation up to its first full stop or line break; with it, the
  text after the last "So the answer is" up to the next full stop or line break, or without that marker the last
  sentence of the generation.
- `is_correct`: the gold answer or an alias appears in the span, case-insensitively and as whole words.
"""

from __future__ import annotations

import re

ANSWER_MARKER = re.compile(r"so the answer is", re.IGNORECASE)


def normalize(text: str) -> str:
    text = re.sub(r"\s+([?.!,:;])", r"\1", text.lower())
    return " ".join(re.findall(r"\w+|[^\w\s]", text))


def extract_span(generation: str, cot: bool = False) -> str:
    if cot:
        markers = list(ANSWER_MARKER.finditer(generation))
        if markers:
            return extract_span(generation[markers[-1].end() :])
        sentences = [s.strip() for s in re.split(r"[.\n]", generation) if s.strip()]
        return sentences[-1] if sentences else ""
    return re.split(r"[.\n]", generation, maxsplit=1)[0].strip()


def is_correct(span: str, gold: str, aliases: tuple[str, ...]) -> bool:
    haystack = f" {normalize(span)} "
    return any(f" {normalize(name)} " in haystack for name in (gold, *aliases) if name.strip())
