"""Where the FFN "neuron" lives in each supported Hugging Face model family (DESIGN.md §4 "Neuron").

A neuron is one component of the INPUT of a decoder layer's FFN output projection, at one token position:
`mlp.down_proj` for gated MLPs (there it equals act(gate) * up), `mlp.c_proj` for GPT-2, `mlp.fc_out` for GPT-J,
`mlp.dense_4h_to_h` for GPT-NeoX, `fc2` for OPT. This module is the only place in the package that knows family
names and module paths; everything else goes through `adapter_for(model)` and `hook_ffn_inputs(...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from knrecall.errors import KnrecallError


class _Family(NamedTuple):
    layers: str  # dotted path of the decoder-layer list, relative to the base model (`model.base_model`)
    projection: str  # dotted path of the FFN output projection, relative to one decoder layer
    width_key: str  # config attribute holding the FFN width
    width_none_is_4x: bool = False  # GPT-2 / GPT-J: `n_inner = None` means 4 * hidden size


_GATED = _Family("layers", "mlp.down_proj", "intermediate_size")

# config.model_type -> where the neurons are. Phi-3 fuses gate and up into `gate_up_proj`, but the input of its
# `down_proj` is still act(gate) * up, so it needs no special case here.
_FAMILIES: dict[str, _Family] = {
    "llama": _GATED,  # LLaMA 2 and 3
    "mistral": _GATED,
    "qwen2": _GATED,
    "qwen3": _GATED,
    "gemma": _GATED,
    "gemma2": _GATED,
    "phi3": _GATED,
    "olmo": _GATED,
    "olmo2": _GATED,
    "gpt2": _Family("h", "mlp.c_proj", "n_inner", width_none_is_4x=True),
    "gptj": _Family("h", "mlp.fc_out", "n_inner", width_none_is_4x=True),
    "gpt_neox": _Family("layers", "mlp.dense_4h_to_h", "intermediate_size"),
    "opt": _Family("decoder.layers", "fc2", "ffn_dim"),  # runs its FFN on [batch * seq, ...]: see hook_ffn_inputs
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

# fn(layer_index, ffn_input) -> a replacement input, or None to leave it unchanged
FFNInputHook = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def _get_path(root: nn.Module, dotted: str) -> nn.Module | None:
    """`root.a.b.c` for dotted = "a.b.c", or None when any step is missing."""
    obj = root
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _config_of(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def input_width(module: nn.Module) -> int:
    """The real input width of an output projection, from its weight (Conv1D: [in, out]; nn.Linear: [out, in])."""
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0])
    if isinstance(module, nn.Linear):
        return int(module.weight.shape[1])
    if hasattr(module, "in_features"):  # Linear-like wrappers (e.g. quantized layers)
        return int(module.in_features)
    raise KnrecallError(f"cannot tell the input width of FFN output projection {type(module).__name__}")


@dataclass(frozen=True)
class FFNAdapter:
    """Maps a model of one family to its FFN output projections."""

    family: str

    @property
    def spec(self) -> _Family:
        return _FAMILIES[self.family]

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        """Every decoder layer, in order; works on `XForCausalLM` models and on bare base models."""
        base = getattr(model, "base_model", model)
        for root in (base, model):
            found = _get_path(root, self.spec.layers)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return list(found)
        raise KnrecallError(
            f"model family '{self.family}': no decoder layers at '{self.spec.layers}' in {type(model).__name__}"
        )

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The FFN output-projection module of every decoder layer, in order."""
        projections = []
        for index, layer in enumerate(self.decoder_layers(model)):
            projection = _get_path(layer, self.spec.projection)
            if not isinstance(projection, nn.Module):
                raise KnrecallError(
                    f"model family '{self.family}': decoder layer {index} has no '{self.spec.projection}'"
                )
            projections.append(projection)
        return projections

    def config_width(self, model_or_config) -> int:
        """Neurons per layer as the config states it (never assumed to be 4 x hidden unless the config says so)."""
        config = _config_of(model_or_config)
        width = getattr(config, self.spec.width_key, None)
        if width is None and self.spec.width_none_is_4x:
            width = 4 * config.hidden_size
        if not isinstance(width, int) or width <= 0:
            raise KnrecallError(f"model family '{self.family}': config has no valid '{self.spec.width_key}'")
        return width

    def width(self, model: nn.Module) -> int:
        """Neurons per layer, from the config, checked against every output projection's real input width."""
        width = self.config_width(model)
        for index, projection in enumerate(self.layers(model)):
            real = input_width(projection)
            if real != width:
                raise KnrecallError(
                    f"model family '{self.family}': config says {self.spec.width_key} = {width}, "
                    f"but layer {index}'s '{self.spec.projection}' takes {real} inputs"
                )
        return width


def adapter_for(model_or_config) -> FFNAdapter:
    """The adapter for a model (or its config), chosen by `config.model_type`."""
    family = getattr(_config_of(model_or_config), "model_type", None)
    if family not in _FAMILIES:
        raise KnrecallError(f"model family '{family}' is not supported; supported: {', '.join(SUPPORTED_FAMILIES)}")
    return FFNAdapter(family)


def num_layers(model: nn.Module) -> int:
    """The number of decoder layers (each has one FFN output projection)."""
    return len(adapter_for(model).layers(model))


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden-states argument of a decoder layer's call."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    return hidden if isinstance(hidden, torch.Tensor) else None


@contextmanager
def hook_ffn_inputs(model: nn.Module, adapter: FFNAdapter | None, fn: FFNInputHook) -> Iterator[None]:
    """Within the block, `fn(layer_index, ffn_input)` sees (and may replace) every output projection's input.

    `ffn_input` has shape [batch, seq, width]; `fn` returns None to keep it or a tensor of the same shape to use
    instead. Some families (OPT) flatten the tokens to [batch * seq, width] before the FFN; there the input is
    viewed as [batch, seq, width] for `fn` (the batch and sequence sizes come from the decoder layer's input) and a
    replacement is flattened back. The hooks are always removed on leaving the block, also when it raises.
    """
    adapter = adapter or adapter_for(model)
    decoder_layers = adapter.decoder_layers(model)
    projections = adapter.layers(model)
    token_shapes: dict[int, torch.Size] = {}  # layer index -> [batch, seq] of the layer's current call
    handles = []

    def make_layer_hook(layer_index: int):
        def layer_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = _hidden_states(args, kwargs)
            if hidden is not None:
                token_shapes[layer_index] = hidden.shape[:-1]

        return layer_pre_hook

    def make_projection_hook(layer_index: int):
        def projection_pre_hook(module: nn.Module, args: tuple):
            x = args[0]
            shaped = x
            if x.dim() == 2:  # flattened tokens: view as [batch, seq, width]
                tokens = token_shapes.get(layer_index)
                if tokens is None or tokens.numel() != x.shape[0]:
                    raise KnrecallError(
                        f"FFN input of layer {layer_index} has shape {tuple(x.shape)}, and the batch and sequence "
                        "sizes cannot be recovered from the decoder layer's input"
                    )
                shaped = x.view(*tokens, x.shape[-1])
            replacement = fn(layer_index, shaped)
            if replacement is None:
                return None
            if replacement.shape != shaped.shape:
                raise KnrecallError(
                    f"FFN input hook of layer {layer_index} returned shape {tuple(replacement.shape)}, "
                    f"expected {tuple(shaped.shape)}"
                )
            return (replacement.reshape(x.shape), *args[1:])

        return projection_pre_hook

    try:
        for index, (layer, projection) in enumerate(zip(decoder_layers, projections, strict=True)):
            handles.append(layer.register_forward_pre_hook(make_layer_hook(index), with_kwargs=True))
            handles.append(projection.register_forward_pre_hook(make_projection_hook(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()
