"""Integrated gradients of prompts you write yourself: one prompt (`attribute`) or one fact's paraphrases
(`attribute_paraphrases`), on a model in memory (`knrecall.load`).

Both tokenize prompt and answer by the workflow's rule (`knrecall.targets`: the answer's ids are the suffix of
tokenize(prompt + answer), multi-token answers teacher-forced) and run the same engines as the `attribute` rule:
the fast engine (`knrecall.attribution.engine`; several prompts share forwards through
`knrecall.attribution.batched`, exactly as the workflow attributes a fact's paraphrases) or the naive reference
(`knrecall.attribution.reference`). Defaults equal `params.yaml`'s `attribution` block.
"""

from __future__ import annotations

from collections.abc import Sequence

from knrecall.attribution.batched import attribute_prompts
from knrecall.attribution.engine import LayerwiseIG, attribute_prompt
from knrecall.attribution.reference import attribute_prompt_naive
from knrecall.errors import KnrecallError
from knrecall.models.adapters import adapter_for
from knrecall.targets import teacher_forced_contexts

ENGINES = ("fast", "naive")


def attribute(model, tokenizer, prompt: str, answer: str, *, steps: int = 20, rule: str = "gauss_legendre",
              target: str = "prob", neuron: str = "ffn_input", engine: str = "fast",
              max_rows: int = 256) -> LayerwiseIG:
    """Per-layer IG of `answer` after `prompt`: a `LayerwiseIG` (attributions and activations [layers, width] as
    float32 CPU tensors, completeness per layer; `.frame()` for a polars table, `.top(k)` for the largest).

    `rule`: gauss_legendre | midpoint | left | right | linspace; `target`: prob | logprob; `neuron`: ffn_input |
    pre_activation; `engine`: fast | naive (the full-sequence reference); `max_rows`: IG rows per forward (memory).
    """
    if engine not in ENGINES:
        raise KnrecallError(f"attribution: unknown engine {engine!r} (expected one of: {', '.join(ENGINES)})")
    prompt_ids, answer_ids = teacher_forced_contexts(tokenizer, prompt, answer)
    adapter = adapter_for(model, neuron)
    options = dict(steps=steps, rule=rule, target=target)
    if engine == "naive":
        return attribute_prompt_naive(model, adapter, prompt_ids, answer_ids, **options)
    return attribute_prompt(model, adapter, prompt_ids, answer_ids, max_rows=max_rows, **options)


def attribute_paraphrases(model, tokenizer, prompts: Sequence[str], answer: str, *, steps: int = 20,
                          rule: str = "gauss_legendre", target: str = "prob", neuron: str = "ffn_input",
                          max_rows: int = 256) -> list[LayerwiseIG]:
    """One `LayerwiseIG` per prompt (same order) of the same `answer`: a fact's paraphrase prompts, attributed
    together as the workflow's `attribute` rule does (results do not depend on the grouping). Options as in
    `attribute`; feed the result to `knrecall.select_kns`."""
    if isinstance(prompts, str) or not prompts:
        raise KnrecallError("attribution: give a non-empty list of prompts (one fact's paraphrases)")
    pairs = [teacher_forced_contexts(tokenizer, prompt, answer) for prompt in prompts]
    return attribute_prompts(model, adapter_for(model, neuron), pairs, steps=steps, rule=rule, target=target,
                             max_rows=max_rows)
