"""Invented, pronounceable entity names that collide with no English word in the templates."""

from __future__ import annotations

import random

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st", "th", "sh", "vr", "zh"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x"]


def invent_word(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(CODAS)
    return word.capitalize()


def invent_names(rng: random.Random, n: int, taken: set[str], syllables=(2, 3), suffix: str = "", words: int = 1) -> list[str]:
    """`n` new distinct names (each `words` invented words, plus an optional suffix word); adds them to `taken`."""
    names: list[str] = []
    while len(names) < n:
        parts = [invent_word(rng, rng.choice(syllables)) for _ in range(words)]
        if any(p.lower() in taken for p in parts):
            continue
        name = " ".join(parts + ([suffix] if suffix else []))
        if name.lower() in taken:
            continue
        taken.update(p.lower() for p in parts)
        taken.add(name.lower())
        names.append(name)
    return names
