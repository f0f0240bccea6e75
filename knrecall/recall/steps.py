"""Reasoning-step positions in a chain-of-thought generation (DESIGN.md §4, "KN activation score").

For a two-hop prompt the KN activations of hop j are read at the position that should use hop j:

* no CoT: the last prompt position, for both hops;
* CoT: in the sequence `prompt_ids + generated_ids`, the position whose next-token prediction is the first token of
  the bridge entity o1 (hop 1) or of the answer o2 (hop 2) in the generated chain; that is the index of the token
  *before* the entity's first token. An entity at generated index 0 is predicted by the last prompt position.
  If an entity does not appear, the step is absent: the last prompt position is used and the step is flagged
  (`hop1_found` / `hop2_found` False).

Which occurrence. Hop 1 is the earliest occurrence of any bridge variant (earliest start; at equal starts the
longest variant). Hop 2 is the earliest occurrence of an answer variant that starts after the end of that bridge
occurrence (the answer named after the bridge is the second reasoning step); an answer named only before the bridge
counts as absent. When the bridge is absent the answer is searched in the whole chain.

Matching is on token ids: a variant matches only where its whole id sequence occurs contiguously in the
generation (a prefix of a multi-token entity, e.g. a chain truncated inside it, does not match). Variants come from
`entity_token_variants`: the entity and each alias, with a leading space (the form after a word: `ĠParis`,
`▁Paris`) and without one (at the start of the text and after a line break). Matching is case-sensitive, and an
entity written in another form (other casing, glued to punctuation the tokenizer merges with it, a different
tokenization chosen by the model) is not found.

Word boundaries. Token ids alone cannot tell whether a match is a whole word: with byte-level BPE "Parisian" may be
`ĠParis` + `ian`, which contains the variant `ĠParis`, and the no-space variant `Paris` can follow a token such as
`ĠSt` inside a longer word. `find_reasoning_steps` therefore matches id sequences only, unless it is given a
`boundary` check; `word_boundary_check(tokenizer)` builds one that decodes the neighbouring tokens and rejects a
match whose text is preceded or followed directly by a letter or digit (`str.isalnum`). It is a text heuristic:
a word continued by `_`, an apostrophe or a hyphen counts as a boundary ("Paris's", "Paris-based" match), and a
token that decodes to a partial UTF-8 character counts as a boundary. Word-level tokenizers (the world's) never
split words, so for them a token match is already a whole-word match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from knrecall.errors import KnrecallError

# (full sequence, start, end) -> whether sequence[start:end] stands as whole word(s) in the decoded text
BoundaryCheck = Callable[[Sequence[int], int, int], bool]

_CONTEXT_WORD = "x"  # the word an entity is tokenized after, to get its mid-text forms


@dataclass(frozen=True)
class ReasoningSteps:
    """Positions (indices into prompt_ids + generated_ids) that predict o1 (hop 1) and o2 (hop 2).

    A `*_found` flag is False when the entity was not in the chain and the position fell back to the last prompt
    position; under no-CoT conditions both positions are the last prompt position and both flags are True.
    """

    hop1_position: int
    hop2_position: int
    hop1_found: bool
    hop2_found: bool


def _plain_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _suffix_after(tokenizer: PreTrainedTokenizerBase, prefix: str, text: str) -> list[int] | None:
    """The ids of `text` after `prefix` in tokenize(prefix + text), or None if the tokenizer merged across them."""
    head = _plain_ids(tokenizer, prefix)
    joint = _plain_ids(tokenizer, prefix + text)
    if joint[: len(head)] != head:
        return None
    return joint[len(head):]


def entity_token_variants(tokenizer: PreTrainedTokenizerBase, entity: str,
                          aliases: Iterable[str] = ()) -> list[list[int]]:
    """The token-id sequences the entity (or an alias) can take inside generated text, deduplicated, in order.

    Per name (stripped): the leading-space form after a word (the ids of " name" after "x", as `knrecall.targets`
    computes an answer after a prompt: `ĠParis`, `▁Paris`, `Paris` for word-level tokenizers), the form at the
    start of a text (tokenize(name)), and the form after a line break (the ids of name after "x\\n"). A form is
    dropped when the tokenizer merges it with the context (no clean suffix), when it is empty, or when it contains a
    special token (UNK above all: a variant `[UNK]` would match every unknown word). A `KnrecallError` is raised
    when no name yields any variant (an empty entity, or one the tokenizer only knows as UNK).
    """
    aliases = tuple(aliases)
    special = set(tokenizer.all_special_ids)
    variants: list[list[int]] = []
    for name in (n.strip() for n in (entity, *aliases)):
        if not name:
            continue
        forms = [_suffix_after(tokenizer, _CONTEXT_WORD, " " + name),
                 _plain_ids(tokenizer, name),
                 _suffix_after(tokenizer, _CONTEXT_WORD + "\n", name)]
        for ids in forms:
            if ids and not special.intersection(ids) and ids not in variants:
                variants.append(ids)
    if not variants:
        raise KnrecallError(f"entity {entity!r} (aliases {list(aliases)}) has no token form to search a generation "
                            "for: it is empty or tokenizes only to special tokens such as UNK")
    return variants


def word_boundary_check(tokenizer: PreTrainedTokenizerBase) -> BoundaryCheck:
    """A `boundary` for `find_reasoning_steps`: the match is not glued to a letter or digit on either side.

    Left: the text the match adds after the token before it starts with a non-alphanumeric character (its space),
    or that token's text ends with one. Right: likewise for the text the token after the match adds. The ends of
    the sequence are boundaries. Decoding keeps special tokens, so the BOS before a match is a boundary.
    """

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def added(before: Sequence[int], after: Sequence[int]) -> tuple[str, str]:
        """(text of `before`, text that `after` adds to it)."""
        head, joint = decode(before), decode([*before, *after])
        if joint.startswith(head):
            return head, joint[len(head):]
        return head, decode(after)

    def glued(left: str, right: str) -> bool:
        return bool(left) and bool(right) and left[-1].isalnum() and right[0].isalnum()

    def check(sequence: Sequence[int], start: int, end: int) -> bool:
        if start > 0 and glued(*added(sequence[start - 1:start], sequence[start:end])):
            return False
        if end < len(sequence) and glued(*added(sequence[start:end], sequence[end:end + 1])):
            return False
        return True

    return check


def _first_occurrence(sequence: Sequence[int], begin: int, variants: Sequence[Sequence[int]],
                      boundary: BoundaryCheck | None) -> tuple[int, int] | None:
    """(start, end) of the earliest variant occurrence in sequence[begin:], the longest at equal starts."""
    ordered = sorted((list(v) for v in variants if len(v)), key=len, reverse=True)  # stable: input order on ties
    for start in range(begin, len(sequence)):
        for variant in ordered:
            end = start + len(variant)
            if list(sequence[start:end]) == variant and (boundary is None or boundary(sequence, start, end)):
                return start, end
    return None


def find_reasoning_steps(prompt_ids: Sequence[int], generated_ids: Sequence[int],
                         bridge_variants: Sequence[Sequence[int]], answer_variants: Sequence[Sequence[int]],
                         cot: bool, boundary: BoundaryCheck | None = None) -> ReasoningSteps:
    """The positions that predict the bridge's and the answer's first token (see the module docstring).

    `prompt_ids` are the ids the model was given (with BOS where the tokenizer adds one), `generated_ids` the ids it
    generated, the variants from `entity_token_variants`. Positions index into prompt_ids + generated_ids.
    `boundary` (e.g. `word_boundary_check(tokenizer)`) rejects matches that are not whole words; without it any
    contiguous occurrence of a variant's ids counts.
    """
    if not prompt_ids:
        raise KnrecallError("the prompt has no tokens: no position predicts the first generated token")
    last = len(prompt_ids) - 1
    if not cot:
        return ReasoningSteps(last, last, True, True)
    sequence = [*prompt_ids, *generated_ids]
    offset = len(prompt_ids)
    bridge = _first_occurrence(sequence, offset, bridge_variants, boundary)
    answer = _first_occurrence(sequence, bridge[1] if bridge else offset, answer_variants, boundary)
    return ReasoningSteps(hop1_position=bridge[0] - 1 if bridge else last,
                          hop2_position=answer[0] - 1 if answer else last,
                          hop1_found=bridge is not None, hop2_found=answer is not None)


def prompt_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """tokenize(prompt) with the special tokens the tokenizer adds before the text (BOS), without those it appends
    after it (EOS), as `knrecall.targets` builds prompt ids. The prompt is not stripped."""
    full = list(tokenizer(prompt).input_ids)
    plain = _plain_ids(tokenizer, prompt)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start + len(plain)]
    raise KnrecallError(f"the tokenizer's special tokens are interleaved with the text of prompt {prompt!r}")


def find_steps_in_text(tokenizer: PreTrainedTokenizerBase, prompt: str, generated_text: str, bridge: str,
                       answer: str, bridge_aliases: Iterable[str] = (), answer_aliases: Iterable[str] = (),
                       cot: bool = True, whole_words: bool = True) -> ReasoningSteps:
    """`find_reasoning_steps` on texts: the prompt tokenized by `prompt_input_ids`, the generation without special
    tokens, the variants by `entity_token_variants`, and (with `whole_words`) `word_boundary_check`.

    Retokenizing text need not give the ids the model generated (a model may produce a non-canonical split, and the
    prompt ids it was fed may differ from tokenize(prompt)), so positions found here can be off. A caller that has
    the model's input and generated ids should call `find_reasoning_steps` with those instead.
    """
    prompt_ids = prompt_input_ids(tokenizer, prompt)
    generated_ids = _plain_ids(tokenizer, generated_text) if generated_text else []
    return find_reasoning_steps(prompt_ids, generated_ids,
                                entity_token_variants(tokenizer, bridge, tuple(bridge_aliases)),
                                entity_token_variants(tokenizer, answer, tuple(answer_aliases)), cot,
                                boundary=word_boundary_check(tokenizer) if whole_words else None)


def subject_last_position(prompt_ids: Sequence[int], subject_variants: Sequence[Sequence[int]],
                          boundary: BoundaryCheck | None = None) -> int | None:
    """The index of the subject's last token in `prompt_ids` (its LAST occurrence: in a few-shot or context prompt
    the item's own question comes last), or None when no variant occurs. Among occurrences the latest start wins;
    at equal starts the longest variant. `subject_variants` from `entity_token_variants(tokenizer, subject)`;
    `boundary` as for `find_reasoning_steps`."""
    ordered = sorted((list(v) for v in subject_variants if len(v)), key=len, reverse=True)
    for start in range(len(prompt_ids) - 1, -1, -1):
        for variant in ordered:
            end = start + len(variant)
            if list(prompt_ids[start:end]) == variant and (boundary is None or boundary(prompt_ids, start, end)):
                return end - 1
    return None
