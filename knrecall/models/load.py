"""Load a causal LM and its tokenizer by hub id or local path, safely (DESIGN.md §8).

Weights load from safetensors only (`use_safetensors=True`), `trust_remote_code` is off unless the user opts in,
and a missing local path or an unreachable hub id ends in one clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from knrecall.errors import KnrecallError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    path: str  # hub id or local directory
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False


def looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") > 1


def load_model(spec: ModelSpec, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model in eval mode with frozen weights, and its tokenizer (left padding, a pad token)."""
    if spec.dtype not in DTYPES:
        raise KnrecallError(f"model {spec.path}: dtype '{spec.dtype}' is not one of {', '.join(DTYPES)}")
    if looks_local(spec.path) and not Path(spec.path).expanduser().is_dir():
        raise KnrecallError(f"model {spec.path}: no such directory")
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            spec.path, dtype=DTYPES[spec.dtype], use_safetensors=True, **kwargs
        )
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KnrecallError(f"model {spec.path}: cannot load ({first_line})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer
