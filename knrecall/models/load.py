"""Load a causal LM and its tokenizer by hub id or local path, safely (DESIGN.md §8).

- Weights load from safetensors only (`use_safetensors=True`). Pickled checkpoints (`pytorch_model*.bin`, `*.pt`,
  `*.pth`, `*.ckpt`) can run arbitrary code when unpickled, so a folder that has only those is refused with one
  message, unless the model opts in with `allow_pickle` (then transformers may load them).
- A checkpoint that needs its own Python code (`auto_map` in `config.json`) is refused unless the model opts in
  with `trust_remote_code`.
- A missing local path, a folder without weights, or an unreachable hub id ends in one clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from knrecall.errors import KnrecallError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    path: str  # hub id or local directory
    revision: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False


def looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") > 1


PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def check_local_folder(spec: ModelSpec) -> None:
    """Refuse, with one message, a local folder that is missing, has no usable weights, or needs code it may not run."""
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise KnrecallError(f"model {spec.path}: no such directory")
    if not (folder / "config.json").exists():
        raise KnrecallError(f"model {spec.path}: no config.json in the folder (not a Hugging Face checkpoint)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"model {spec.path}: config.json is not valid JSON ({exc})") from None
    if config.get("auto_map") and not spec.trust_remote_code:
        raise KnrecallError(f"model {spec.path}: the checkpoint needs its own Python code (config.json 'auto_map'); "
                            "set trust_remote_code: true for this model only if you trust that code")
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern))
    if pickled and not spec.allow_pickle:
        raise KnrecallError(f"model {spec.path}: only pickled weights ({', '.join(pickled)}), which can run code when "
                            "loaded; convert them to safetensors, or set allow_pickle: true for this model if you "
                            "trust the files")
    if not pickled:
        raise KnrecallError(f"model {spec.path}: no weights in the folder (no *.safetensors file)")


def load_model(spec: ModelSpec, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model in eval mode with frozen weights, and its tokenizer (left padding, a pad token)."""
    if spec.dtype not in DTYPES:
        raise KnrecallError(f"model {spec.path}: dtype '{spec.dtype}' is not one of {', '.join(DTYPES)}")
    if looks_local(spec.path):
        check_local_folder(spec)
    hf_logging.disable_progress_bar()  # a per-file bar for small local checkpoints is noise in logs and errors
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            spec.path, dtype=DTYPES[spec.dtype], use_safetensors=None if spec.allow_pickle else True, **kwargs
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


def load(path: str | Path, *, revision: str | None = None, dtype: str = "float32", trust_remote_code: bool = False,
         allow_pickle: bool = False, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of a hub id or a local checkpoint folder, by the workflow's rules (`load_model`: safetensors
    only unless `allow_pickle`, no checkpoint code unless `trust_remote_code`; eval mode, frozen weights, left
    padding). `dtype`: float32 | bfloat16 | float16; `device`: cpu, cuda, cuda:1, ..."""
    return load_model(ModelSpec(str(path), revision, dtype, trust_remote_code, allow_pickle), device)
