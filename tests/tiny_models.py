"""Tiny random causal LMs of every supported family, for fast tests of family-specific code.

Every model has hidden size 32, 2 decoder layers, 4 attention heads (2 key/value heads where the family has GQA),
a vocabulary of 64 and an FFN width that is NOT 4 x hidden (48 for gated MLPs, 40 for the others), so that code
assuming 4 x hidden fails. Token ids 0/2/3 are pad/BOS/EOS, as in `knrecall.world.tokenizer.build_tokenizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

# Written out here, independently of knrecall.models.adapters: the module of decoder layer {i} whose OUTPUT, before
# the activation function, holds the `pre_activation` neurons. Phi-3's `gate_up_proj` outputs [gate, up]: the
# neurons are its first half.
PRE_ACTIVATION_MODULES = {
    **{family: "model.layers.{i}.mlp.gate_proj" for family in GATED_FAMILIES},
    "phi3": "model.layers.{i}.mlp.gate_up_proj",
    "gpt2": "transformer.h.{i}.mlp.c_fc",
    "gptj": "transformer.h.{i}.mlp.fc_in",
    "gpt_neox": "gpt_neox.layers.{i}.mlp.dense_h_to_4h",
    "opt": "model.decoder.layers.{i}.fc1",
}


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


@contextmanager
def explicit_pre_activation_hooks(model: PreTrainedModel, fn: Callable, batch: int = 1) -> Iterator[None]:
    """Plain forward hooks, placed here and not by knrecall, on every layer's pre-activation module (see
    `PRE_ACTIVATION_MODULES`): `fn(layer, gate)` sees the [batch, seq, width] pre-activations (Phi-3: the gate half;
    OPT's flattened [batch * seq, width] viewed with `batch` rows) and returns a replacement or None."""
    family = model.config.model_type
    modules = dict(model.named_modules())
    handles = []

    def make(layer: int):
        def hook(module, args, output):
            gate, up = output.chunk(2, dim=-1) if family == "phi3" else (output, None)
            shaped = gate.view(batch, -1, gate.shape[-1]) if gate.dim() == 2 else gate
            new = fn(layer, shaped)
            if new is None:
                return None
            new = new.reshape(gate.shape)
            return torch.cat([new, up], dim=-1) if up is not None else new

        return hook

    try:
        for layer in range(model.config.num_hidden_layers):
            handles.append(modules[PRE_ACTIVATION_MODULES[family].format(i=layer)].register_forward_hook(make(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()
