"""The token ids of an answer after a prompt (DESIGN.md §4).

The answer's ids are the suffix of tokenize(prompt + " " + answer) after tokenize(prompt); the prompt's ids must be
a prefix of the joint ids (otherwise the tokenizer merged across the boundary and the target would be wrong), and
the answer must not tokenize to nothing or contain special tokens.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from knrecall.errors import KnrecallError


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> list[int]:
    prompt_ids = tokenizer(prompt).input_ids
    joint_ids = tokenizer(f"{prompt} {answer.strip()}").input_ids
    if joint_ids[: len(prompt_ids)] != prompt_ids:
        raise KnrecallError(f"answer '{answer}' is not prefix-consistent with its prompt '{prompt}'")
    ids = joint_ids[len(prompt_ids) :]
    if not ids:
        raise KnrecallError(f"answer '{answer}' tokenizes to nothing after prompt '{prompt}'")
    if set(ids) & set(tokenizer.all_special_ids):
        raise KnrecallError(f"answer '{answer}' contains special tokens")
    return ids
