"""Tiny random causal LMs of every supported family, for fast tests of family-specific code.

Every model has hidden size 32, 2 decoder layers, 4 attention heads (2 key/value heads where the family has GQA),
a vocabulary of 64 and an FFN width that is NOT 4 x hidden (48 for gated MLPs, 40 for the others), so that code
assuming 4 x hidden fails. Token ids 0/2/3 are pad/BOS/EOS, as in `knrecall.world.tokenizer.build_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from knrecall.world.tokenizer import build_tokenizer

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, POSITIONS = 32, 2, 4, 2, 64, 64
HEAD_DIM = HIDDEN // HEADS

GATED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2")
FAMILIES = GATED_FAMILIES + ("gpt2", "gptj", "gpt_neox", "opt")

# the FFN width each tiny model is built with; deliberately different from 4 * HIDDEN = 128
WIDTHS = {family: 48 if family in GATED_FAMILIES else 40 for family in FAMILIES}

_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}


def _config_kwargs(family: str) -> dict:
    """Small sizes in each family's own config vocabulary."""
    width = WIDTHS[family]
    if family in ("gpt2", "gptj"):
        kwargs = {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": width, "n_positions": POSITIONS}
        if family == "gptj":
            kwargs["rotary_dim"] = HEAD_DIM // 2
        return kwargs
    common = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "max_position_embeddings": POSITIONS}
    if family == "opt":
        return {**common, "ffn_dim": width, "word_embed_proj_dim": HIDDEN}
    if family == "gpt_neox":
        return {**common, "intermediate_size": width}
    kwargs = {**common, "intermediate_size": width, "num_key_value_heads": KV_HEADS}
    if family in ("gemma", "gemma2", "qwen3"):
        kwargs["head_dim"] = HEAD_DIM  # these default to 128 / 256 regardless of hidden size
    if family == "gemma2":
        # softcapping (50 / 30) and the 4096-token sliding window stay at their defaults: sane for short inputs
        kwargs["query_pre_attn_scalar"] = HEAD_DIM
    return kwargs


def tiny_config(family: str) -> PretrainedConfig:
    """The config of the tiny model of `family` (a `config.model_type` value)."""
    if family not in FAMILIES:
        raise ValueError(f"no tiny model for family '{family}'")
    return AutoConfig.for_model(family, vocab_size=VOCAB, **_TOKEN_IDS, **_config_kwargs(family))


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """A tiny random `XForCausalLM` of `family`, float32, eval mode, eager attention; same seed, same weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def tiny_model_dir(family: str, path: str | Path, seed: int = 0) -> Path:
    """Save the tiny model (safetensors) and a tiny word-level tokenizer to `path`, loadable by local path."""
    path = Path(path)
    tiny_model(family, seed).save_pretrained(path, safe_serialization=True)
    build_tokenizer(["a b c"]).save_pretrained(path)
    return path
