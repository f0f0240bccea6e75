"""Instruction-tuned models: every question prompt wrapped in the tokenizer's own chat template.

With `models.<name>.chat_template: true` the prompt a condition's template renders (the question, its exemplars or
context: "Q: ... A:") becomes the content of one user turn, and the model answers in the assistant turn:

    tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)

The wrapped text is the prompt everywhere that model's prompts are built — answering, the single-hop prompts of
attribution and of the KN baselines, the interventions — and is what the predictions store (the recall and
causal phases read it from there), so every phase feeds the model the same tokens. The answer follows the
assistant turn under the rule of `knrecall.targets` (a template that ends the turn header with a line break gets
the answer without a leading space).

Most templates begin with the BOS token's text ("<s>", "<|begin_of_text|>"). When the tokenizer also adds BOS
itself, tokenizing the rendered text would give two BOS tokens, so that leading text is dropped from the prompt
(the model still sees one BOS, the one the tokenizer adds).

A model with chat_template on whose tokenizer has no chat template stops with one message naming the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from knrecall.errors import KnrecallError


def identity(prompt: str) -> str:
    return prompt


def chat_wrapper(tokenizer, model_name: str) -> Callable[[str], str]:
    """The function that turns a question prompt into `model_name`'s chat prompt (module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        raise KnrecallError(
            f"model '{model_name}': chat_template is on, but its tokenizer has no chat template (no 'chat_template' "
            "in tokenizer_config.json, no chat_template.jinja); use the instruction-tuned checkpoint's tokenizer or "
            f"set models.{model_name}.chat_template: false")
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else None
    adds_bos = bool(bos) and list(tokenizer("a").input_ids[:1]) == [tokenizer.bos_token_id] and \
        list(tokenizer("a", add_special_tokens=False).input_ids[:1]) != [tokenizer.bos_token_id]

    @functools.lru_cache(maxsize=1 << 16)
    def wrap(prompt: str) -> str:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=False)
        except Exception as exc:  # jinja2 raises its own error types (TemplateError, UndefinedError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KnrecallError(f"model '{model_name}': its chat template cannot render a user turn ({first})") from None
        if not isinstance(text, str) or not text.strip():
            raise KnrecallError(f"model '{model_name}': its chat template renders an empty prompt")
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    return wrap


def prompt_wrapper(tokenizer, enabled: bool, model_name: str) -> Callable[[str], str]:
    """`chat_wrapper` when `enabled`, else the identity."""
    return chat_wrapper(tokenizer, model_name) if enabled else identity
