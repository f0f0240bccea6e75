"""A word-level tokenizer for the world, saved as a Hugging Face fast tokenizer.

Words and punctuation marks are tokens (pre-tokenizer `Whitespace`: `\\w+|[^\\w\\s]+`), a BOS token starts every
sequence, and EOS ends every training answer. It loads with `AutoTokenizer.from_pretrained` like any checkpoint's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS] + sorted(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def world_tokenizer(corpus: Iterable[dict], items: Iterable[dict], templates: Mapping[str, str],
                    extra_templates: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """The world model's tokenizer: every word of the training text, of every item's questions, and of every
    condition's prompt template (so that evaluation prompts never contain [UNK])."""
    texts = [f"{ex['prompt']} {ex['answer']} ." for ex in corpus]
    for item in items:
        texts += [item["two_hop"], *item["fact1_query"], *item["fact2_query"]]
    texts += [re.sub(r"\{\w+\}", " ", template) for template in [*templates.values(), *extra_templates]]
    return build_tokenizer(texts)
