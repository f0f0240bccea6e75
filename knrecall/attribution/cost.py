"""The attribution engine's cost model: matrix-multiply FLOPs and a memory bound per prompt, from a config alone.

FLOPs (the engine's work; norms, activations, softmax and copies are memory-bound overhead and not counted):
    P      = parameters of the 2-D weight matrices of the decoder layers (no embeddings, no LM head)
    L      = decoder layers, d = heads x head_dim, h = hidden size, V = vocabulary size
    fwd(c) = 2 P + 4 L d c        one token forward attending to c positions
    head   = 2 h V                LM head for one scored position
    bwd(c) = 2 (P - P0) + 8 (L - 1) d c + head
                                  input-gradient backward (weights never require grad); the gradient stops at
                                  layer 0's FFN output projection, so layer 0's other matrices (P0) get none
    prefill = sum_{i=1}^{n-1} fwd(i) + head
    answer token j (context c = n + j): fwd(c) + head + R (fwd(c) + head + bwd(c)),  R = L (steps + 1) rows
`benchmarks/attribution.py` checks this against the real model's parameters and torch's FLOP counter (2-4 % above).

Memory (an upper bound for planning, not a measurement): the weights, the prefix's KV cache, and for one chunk of
`max_rows` rows the activations kept for the backward pass (per row and layer: ~6 h + 3 w + heads x c values for
a gated MLP of width w) plus fp32 logits (V per row); x 2 for the gradient buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from knrecall.errors import KnrecallError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# the paper's models (config.json values of the public checkpoints)
PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                  "num_key_value_heads": 32, "vocab_size": 32000},
    "llama3-8b": {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "vocab_size": 128256},
    "mistral-7b": {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000},
}


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    width: int  # FFN width (neurons per layer)
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated: bool = True
    tied: bool = False  # the LM head shares the embedding matrix

    @property
    def attention_params(self) -> int:  # q, o: h x d; k, v: h x kv_heads x head_dim
        d = self.heads * self.head_dim
        return 2 * self.hidden * d + 2 * self.hidden * self.kv_heads * self.head_dim

    @property
    def mlp_params(self) -> int:
        return (3 if self.gated else 2) * self.hidden * self.width

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params

    @property
    def total_params(self) -> int:  # decoder matrices + embeddings + an untied LM head (norms left out)
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2)


def shape_from_config(config: dict[str, Any] | Any) -> Shape:
    """A LLaMA-style (gated MLP) shape from a config dict or a `PretrainedConfig`."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    missing = [key for key in required if not isinstance(get(key), int)]
    if missing:
        raise KnrecallError(f"the cost model reads LLaMA-style configs (gated MLP: llama, mistral, qwen2, ...); this"
                            f" config ({get('model_type', 'no model_type')}) has no integer {', '.join(missing)}")
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    return Shape(layers=get("num_hidden_layers"), hidden=hidden, width=get("intermediate_size"), heads=heads,
                 kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or hidden // heads,
                 vocab=get("vocab_size"), tied=bool(get("tie_word_embeddings", False)))


def engine_flops(shape: Shape, prompt_len: int, answer_len: int, steps: int) -> float:
    """Matrix-multiply FLOPs of one engine call (see the module docstring)."""
    params = shape.layers * shape.layer_params
    params0 = shape.layer_params - shape.hidden * shape.width  # layer 0 without its FFN output projection
    d = shape.heads * shape.head_dim
    head = 2 * shape.hidden * shape.vocab

    def fwd(c: int) -> float:
        return 2 * params + 4 * shape.layers * d * c

    def bwd(c: int) -> float:
        return 2 * (params - params0) + 8 * (shape.layers - 1) * d * c + head

    total = sum(fwd(i) for i in range(1, prompt_len)) + head if prompt_len > 1 else 0.0
    rows = shape.layers * (steps + 1)
    for j in range(answer_len):
        c = prompt_len + j
        total += fwd(c) + head + rows * (fwd(c) + head + bwd(c))
    return float(total)


def engine_memory_bytes(shape: Shape, prompt_len: int, answer_len: int, steps: int, max_rows: int,
                        dtype: str = "bfloat16") -> float:
    """An upper bound of the engine's memory for one prompt (see the module docstring)."""
    size = DTYPE_BYTES[dtype]
    context = prompt_len + answer_len
    weights = shape.total_params * size
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * context * size
    rows = min(max_rows, shape.layers * (steps + 1))
    per_row = shape.layers * (6 * shape.hidden + 3 * shape.width + shape.heads * context) * size + 4 * shape.vocab
    return float(weights + kv_cache + 2 * rows * per_row)


def estimate(shape: Shape, prompts: int, prompt_len: int, answer_len: int, steps: int, max_rows: int, dtype: str,
             tflops: float) -> dict[str, float]:
    """FLOPs and memory per prompt, and the hours for `prompts` prompts at an effective `tflops` rate."""
    flops = engine_flops(shape, prompt_len, answer_len, steps)
    return {
        "parameters_billion": shape.total_params / 1e9,
        "tflop_per_prompt": flops / 1e12,
        "seconds_per_prompt": flops / (tflops * 1e12),
        "hours": prompts * flops / (tflops * 1e12) / 3600,
        "memory_gib": engine_memory_bytes(shape, prompt_len, answer_len, steps, max_rows, dtype) / 2**30,
    }
