"""The token ids of an answer after a prompt (DESIGN.md §4).

Rule. The answer is stripped and joined to the prompt with a separator (below); the answer's ids are the suffix of
tokenize(joint text) after tokenize(context), where the context is the prompt minus the separator whitespace. The
context's ids must be a prefix of the joint ids, otherwise the tokenizer merged across the prompt/answer boundary
and the suffix would not be the answer (a `KnrecallError` names the prompt and answer). The answer must tokenize to
at least one id and contain no special token (BOS, EOS, PAD, UNK, ...: `tokenizer.all_special_ids`, and no
special-token string in its text); BOS is never an answer token.

Separator (the whitespace between prompt and answer belongs to the answer, as the model sees it):

* prompt ends in a non-space character -> one space: joint = prompt + " " + answer, context = prompt. Tokenizers
  that attach a space to the following word (byte-level BPE's `Ġ`, SentencePiece/Metaspace's `▁`) then give the
  answer its leading-space form (`ĠParis`, `▁Paris`), the form a model predicts after "... is".
* prompt ends in spaces or tabs -> no extra space: joint = prompt + answer, and those trailing spaces/tabs move to
  the answer: context = the prompt without them. Tokenizing the prompt literally would end it in a lone `Ġ` / `▁`
  token that the joint tokenization never contains (it has `ĠParis`), so the literal prefix check would always
  fail, and the literal context is one that models rarely see. The same convention as lm-evaluation-harness.
  Callers that feed the model must use the returned `prompt_ids` (or `TargetTokens.context`), not tokenize(prompt).
* prompt ends in a line break (after removing trailing spaces/tabs) -> the line break stays in the context and
  there is no separator: joint = context + answer. Line breaks are tokens of their own (`Ċ`, `<0x0A>`), and
  what follows one is the word without a leading space (`Paris`, not `ĠParis`), as in the model's training text.
* an answer starting with punctuation gets the same rule (one space after a non-space prompt); no special case.

Special tokens the tokenizer adds itself (BOS by a post-processor, or an EOS appended after the text) are found by
comparing the encoding with and without `add_special_tokens`: tokens added before the text start `prompt_ids`;
tokens added after the text are dropped (they are not part of what precedes or forms the answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from knrecall.errors import KnrecallError

_TRAILING_SPACES = re.compile(r"[^\S\r\n]+$")  # whitespace other than line breaks at the end


@dataclass(frozen=True)
class TargetTokens:
    """A prompt's and its answer's token ids; `prompt_ids + answer_ids` is the tokenization of `text`."""

    context: str  # the prompt text `prompt_ids` encode (the prompt minus trailing spaces/tabs)
    text: str  # context + separator + answer
    prompt_ids: list[int]  # with the tokenizer's own leading special tokens (e.g. BOS)
    answer_ids: list[int]  # non-empty, no special tokens

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids

    def contexts(self) -> list[tuple[list[int], int]]:
        """Teacher forcing: (context ids, gold id) per answer token j, context = prompt_ids + answer_ids[:j]."""
        return [(self.prompt_ids + self.answer_ids[:j], gold) for j, gold in enumerate(self.answer_ids)]


def join_prompt_and_answer(prompt: str, answer: str) -> tuple[str, str]:
    """(context, joint text) for `prompt` and the stripped `answer` under the separator rule of this module."""
    answer = answer.strip()
    context = _TRAILING_SPACES.sub("", prompt)
    if context != prompt or context.endswith(("\n", "\r")):
        return context, prompt + answer
    return context, f"{prompt} {answer}"


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[int], list[int]]:
    """(special ids the tokenizer adds before the text, the text's ids, special ids it adds after)."""
    full = list(tokenizer(text).input_ids)
    plain = list(tokenizer(text, add_special_tokens=False).input_ids)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], plain, full[start + len(plain) :]
    raise KnrecallError(f"the tokenizer's special tokens are interleaved with the text of {text!r}; "
                        "cannot locate the answer")


def target_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> TargetTokens:
    """The prompt's and answer's token ids under the rule of this module (DESIGN.md §4)."""
    where = f"answer {answer!r} after prompt {prompt!r}"
    if not answer.strip():
        raise KnrecallError(f"{where}: the answer tokenizes to nothing (it is empty)")
    if not prompt.strip():
        raise KnrecallError(f"{where}: the prompt is empty, no position predicts the answer")
    special_strings = [s for s in tokenizer.all_special_tokens if s and s in answer]
    if special_strings:
        raise KnrecallError(f"{where}: the answer contains special tokens {special_strings}")
    context, text = join_prompt_and_answer(prompt, answer)
    head, joint, _ = _encode(tokenizer, text)
    context_head, context_ids, _ = _encode(tokenizer, context)
    if context_head != head or joint[: len(context_ids)] != context_ids:
        raise KnrecallError(
            f"{where}: the prompt's tokens are not a prefix of the prompt+answer tokens (the tokenizer merged "
            f"across the boundary: {tokenizer.convert_ids_to_tokens(context_ids[-3:])} vs "
            f"{tokenizer.convert_ids_to_tokens(joint[max(0, len(context_ids) - 3) : len(context_ids) + 1])})"
        )
    ids = joint[len(context_ids) :]
    if not ids:
        raise KnrecallError(f"{where}: the answer tokenizes to nothing")
    special = set(tokenizer.all_special_ids) | ({tokenizer.bos_token_id} - {None})
    found = [tok for tok, i in zip(tokenizer.convert_ids_to_tokens(ids), ids) if i in special]
    if found:
        unknown = " (a word the tokenizer does not know)" if tokenizer.unk_token in found else ""
        raise KnrecallError(f"{where}: the answer contains special tokens {found}{unknown}")
    if not head + context_ids:
        raise KnrecallError(f"{where}: the prompt tokenizes to nothing, no position predicts the answer")
    return TargetTokens(context=context, text=text, prompt_ids=head + context_ids, answer_ids=ids)


def teacher_forced_contexts(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str
) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) with prompt_ids + answer_ids == the tokenization of prompt + separator + answer.

    prompt_ids carry the tokenizer's own leading special tokens (BOS where it adds one). Answer token j is predicted
    from the context prompt_ids + answer_ids[:j] (teacher forcing with the gold tokens).
    """
    target = target_tokens(tokenizer, prompt, answer)
    return target.prompt_ids, target.answer_ids


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> list[int]:
    """The answer's token ids after `prompt` (see the module docstring for the rule)."""
    return target_tokens(tokenizer, prompt, answer).answer_ids
