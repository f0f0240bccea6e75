"""Where the FFN "neuron" lives in each supported Hugging Face model family (DESIGN.md §4 "Neuron").

Two definitions of a neuron (`attribution.neuron`), each one component of a decoder layer's FFN at one token
position:

- `ffn_input` (the default): the INPUT of the FFN output projection: `mlp.down_proj` for gated MLPs (there it equals
  act(gate) * up), `mlp.c_proj` for GPT-2, `mlp.fc_out` for GPT-J, `mlp.dense_4h_to_h` for GPT-NeoX, `fc2` for OPT.
  Read and replaced by a forward PRE-hook on that projection.
- `pre_activation`: the OUTPUT of the FFN's first projection, before the activation function: `mlp.gate_proj` for
  gated MLPs (the gate, not the up projection), the first half of `mlp.gate_up_proj` for Phi-3 (it fuses
  [gate, up]), `mlp.c_fc` for GPT-2, `mlp.fc_in` for GPT-J, `mlp.dense_h_to_4h` for GPT-NeoX, `fc1` for OPT. What
  EleutherAI's and EasyEdit's knowledge-neuron code hook. Read and replaced by a forward hook on that projection
  (replacing its output), so scaling such a neuron scales the activation function's input.

Both have `config.intermediate_size` components (or the family's name for it). This module is the only place in the
package that knows family names and module paths; everything else goes through `adapter_for(model, neuron)` and
`hook_neurons(model, adapter, fn)`.
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
    projection: str  # dotted path of the FFN output projection, relative to one decoder layer (`ffn_input`)
    width_key: str  # config attribute holding the FFN width
    width_none_is_4x: bool = False  # GPT-2 / GPT-J: `n_inner = None` means 4 * hidden size
    # dotted path of the FFN's first projection, whose output before the activation function is the
    # `pre_activation` neuron; None where the family has no such module (the definition is then refused)
    first_projection: str | None = None
    fused_gate: bool = False  # the first projection outputs [gate, up] concatenated: the neurons are its first half


_GATED = _Family("layers", "mlp.down_proj", "intermediate_size", first_projection="mlp.gate_proj")

# config.model_type -> where the neurons are. Phi-3 fuses gate and up into `gate_up_proj`; the input of its
# `down_proj` is still act(gate) * up, and its pre-activation neurons are the gate, the first half of the output.
_FAMILIES: dict[str, _Family] = {
    "llama": _GATED,  # LLaMA 2 and 3
    "mistral": _GATED,
    "qwen2": _GATED,
    "qwen3": _GATED,
    "gemma": _GATED,
    "gemma2": _GATED,
    "phi3": _GATED._replace(first_projection="mlp.gate_up_proj", fused_gate=True),
    "olmo": _GATED,
    "olmo2": _GATED,
    "gpt2": _Family("h", "mlp.c_proj", "n_inner", width_none_is_4x=True, first_projection="mlp.c_fc"),
    "gptj": _Family("h", "mlp.fc_out", "n_inner", width_none_is_4x=True, first_projection="mlp.fc_in"),
    "gpt_neox": _Family("layers", "mlp.dense_4h_to_h", "intermediate_size", first_projection="mlp.dense_h_to_4h"),
    # OPT runs its FFN on [batch * seq, ...]: see hook_neurons
    "opt": _Family("decoder.layers", "fc2", "ffn_dim", first_projection="fc1"),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

# `attribution.neuron`: what a neuron is (see the module docstring); the first is the default
NEURON_DEFINITIONS: tuple[str, ...] = ("ffn_input", "pre_activation")
DEFAULT_NEURON = NEURON_DEFINITIONS[0]

# fn(layer_index, activations [batch, seq, width]) -> a replacement, or None to leave them unchanged
NeuronHook = Callable[[int, torch.Tensor], "torch.Tensor | None"]


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


def _projection_width(module: nn.Module, side: str) -> int:
    """The real input (`side` "in") or output ("out") width of a projection, from its weight (Conv1D: [in, out];
    nn.Linear: [out, in]), or a Linear-like wrapper's in_features / out_features (e.g. quantized layers)."""
    conv_axis, linear_axis = (0, 1) if side == "in" else (1, 0)
    if isinstance(module, Conv1D):
        return int(module.weight.shape[conv_axis])
    if isinstance(module, nn.Linear):
        return int(module.weight.shape[linear_axis])
    if hasattr(module, f"{side}_features"):
        return int(getattr(module, f"{side}_features"))
    what = "input width of FFN output projection" if side == "in" else "output width of FFN projection"
    raise KnrecallError(f"cannot tell the {what} {type(module).__name__}")


def input_width(module: nn.Module) -> int:
    """The real input width of an output projection."""
    return _projection_width(module, "in")


def output_width(module: nn.Module) -> int:
    """The real output width of a projection."""
    return _projection_width(module, "out")


@dataclass(frozen=True)
class FFNAdapter:
    """Maps a model of one family to the modules that hold its neurons under one neuron definition."""

    family: str
    neuron: str = DEFAULT_NEURON

    @property
    def spec(self) -> _Family:
        return _FAMILIES[self.family]

    @property
    def module_path(self) -> str:
        """The dotted path, relative to one decoder layer, of the module whose input (`ffn_input`) or output
        (`pre_activation`) holds the neurons."""
        return self.spec.projection if self.neuron == "ffn_input" else self.spec.first_projection

    @property
    def reads_output(self) -> bool:
        """True when the neurons are the module's output (a forward hook), False for its input (a pre-hook)."""
        return self.neuron == "pre_activation"

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
        """The module of every decoder layer that holds its neurons, in order: the FFN output projection
        (`ffn_input`, its input) or the first projection (`pre_activation`, its output)."""
        projections = []
        for index, layer in enumerate(self.decoder_layers(model)):
            projection = _get_path(layer, self.module_path)
            if not isinstance(projection, nn.Module):
                raise KnrecallError(
                    f"model family '{self.family}': decoder layer {index} has no '{self.module_path}'"
                )
            projections.append(projection)
        return projections

    def _module_width(self, module: nn.Module) -> int:
        if not self.reads_output:
            return input_width(module)
        width = output_width(module)
        return width // 2 if self.spec.fused_gate else width

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
        """Neurons per layer, from the config, checked against every neuron module's real width (the output
        projection's inputs, or the first projection's outputs: half of them where it fuses gate and up)."""
        width = self.config_width(model)
        for index, projection in enumerate(self.layers(model)):
            real = self._module_width(projection)
            if real != width:
                what = ("gate outputs" if self.spec.fused_gate else "outputs") if self.reads_output else "inputs"
                verb = "gives" if self.reads_output else "takes"
                raise KnrecallError(
                    f"model family '{self.family}': config says {self.spec.width_key} = {width}, "
                    f"but layer {index}'s '{self.module_path}' {verb} {real} {what}"
                )
        return width


def adapter_for(model_or_config, neuron: str = DEFAULT_NEURON) -> FFNAdapter:
    """The adapter for a model (or its config), chosen by `config.model_type`, for one neuron definition
    (`attribution.neuron`: `ffn_input` or `pre_activation`)."""
    family = getattr(_config_of(model_or_config), "model_type", None)
    if family not in _FAMILIES:
        raise KnrecallError(f"model family '{family}' is not supported; supported: {', '.join(SUPPORTED_FAMILIES)}")
    if neuron not in NEURON_DEFINITIONS:
        raise KnrecallError(f"unknown neuron definition '{neuron}' (known: {', '.join(NEURON_DEFINITIONS)})")
    if neuron == "pre_activation" and _FAMILIES[family].first_projection is None:
        raise KnrecallError(f"model family '{family}' has no pre-activation neuron (attribution.neuron: "
                            f"pre_activation); use attribution.neuron: ffn_input")
    return FFNAdapter(family, neuron)


def num_layers(model: nn.Module) -> int:
    """The number of decoder layers (each has one FFN output projection)."""
    return len(adapter_for(model).layers(model))


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden-states argument of a decoder layer's call."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    return hidden if isinstance(hidden, torch.Tensor) else None


@contextmanager
def hook_neurons(model: nn.Module, adapter: FFNAdapter | None, fn: NeuronHook) -> Iterator[None]:
    """Within the block, `fn(layer_index, activations)` sees (and may replace) every layer's neurons, as the
    adapter defines them (`adapter=None`: `adapter_for(model)`, the default `ffn_input`).

    `activations` has shape [batch, seq, width]; `fn` returns None to keep them or a tensor of the same shape to
    use instead. `ffn_input` neurons are the input of the FFN output projection (a forward pre-hook replaces it);
    `pre_activation` neurons are the output of the first projection (a forward hook replaces it; where that
    projection fuses [gate, up], `fn` sees the gate half and the up half is kept). Some families (OPT) flatten
    the tokens to [batch * seq, width] around the FFN; there the tensor is viewed as [batch, seq, width] for `fn`
    (the batch and sequence sizes come from the decoder layer's input) and a replacement is flattened back. The
    hooks are always removed on leaving the block, also when it raises.
    """
    adapter = adapter or adapter_for(model)
    decoder_layers = adapter.decoder_layers(model)
    modules = adapter.layers(model)
    fused = adapter.reads_output and adapter.spec.fused_gate
    token_shapes: dict[int, torch.Size] = {}  # layer index -> [batch, seq] of the layer's current call
    handles = []

    def make_layer_hook(layer_index: int):
        def layer_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = _hidden_states(args, kwargs)
            if hidden is not None:
                token_shapes[layer_index] = hidden.shape[:-1]

        return layer_pre_hook

    def replaced(layer_index: int, x: torch.Tensor) -> torch.Tensor | None:
        """`fn` on `x` viewed as [batch, seq, width]; its replacement in `x`'s own shape, or None."""
        shaped = x
        if x.dim() == 2:  # flattened tokens: view as [batch, seq, width]
            tokens = token_shapes.get(layer_index)
            if tokens is None or tokens.numel() != x.shape[0]:
                raise KnrecallError(
                    f"FFN neurons of layer {layer_index} have shape {tuple(x.shape)}, and the batch and sequence "
                    "sizes cannot be recovered from the decoder layer's input"
                )
            shaped = x.view(*tokens, x.shape[-1])
        replacement = fn(layer_index, shaped)
        if replacement is None:
            return None
        if replacement.shape != shaped.shape:
            raise KnrecallError(
                f"neuron hook of layer {layer_index} returned shape {tuple(replacement.shape)}, "
                f"expected {tuple(shaped.shape)}"
            )
        return replacement.reshape(x.shape)

    def make_input_hook(layer_index: int):  # ffn_input: the output projection's input
        def projection_pre_hook(module: nn.Module, args: tuple):
            replacement = replaced(layer_index, args[0])
            return None if replacement is None else (replacement, *args[1:])

        return projection_pre_hook

    def make_output_hook(layer_index: int):  # pre_activation: the first projection's output
        def projection_hook(module: nn.Module, args: tuple, output: torch.Tensor):
            if not fused:
                return replaced(layer_index, output)
            gate, up = output.chunk(2, dim=-1)
            replacement = replaced(layer_index, gate)
            return None if replacement is None else torch.cat([replacement, up], dim=-1)

        return projection_hook

    try:
        for index, (layer, module) in enumerate(zip(decoder_layers, modules, strict=True)):
            handles.append(layer.register_forward_pre_hook(make_layer_hook(index), with_kwargs=True))
            if adapter.reads_output:
                handles.append(module.register_forward_hook(make_output_hook(index)))
            else:
                handles.append(module.register_forward_pre_hook(make_input_hook(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def hook_layer_inputs(model: nn.Module, adapter: FFNAdapter | None, fn: NeuronHook) -> Iterator[None]:
    """Within the block, `fn(layer_index, hidden_states)` sees (and may replace) the hidden states [batch, seq,
    hidden size] each decoder layer receives; it returns None to keep them or a tensor of the same shape to use
    instead. The hooks are always removed on leaving the block."""
    adapter = adapter or adapter_for(model)

    def make_hook(layer_index: int):
        def layer_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
            hidden = _hidden_states(args, kwargs)
            if hidden is None:
                raise KnrecallError(f"decoder layer {layer_index} was called without its hidden states")
            replacement = fn(layer_index, hidden)
            if replacement is None:
                return None
            if replacement.shape != hidden.shape:
                raise KnrecallError(f"layer-input hook of layer {layer_index} returned shape "
                                    f"{tuple(replacement.shape)}, expected {tuple(hidden.shape)}")
            if args:
                return (replacement, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replacement}

        return layer_pre_hook

    handles = []
    try:
        for index, layer in enumerate(adapter.decoder_layers(model)):
            handles.append(layer.register_forward_pre_hook(make_hook(index), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pass_through(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


@contextmanager
def skip_layers_below(model: nn.Module, adapter: FFNAdapter | None, start: int) -> Iterator[None]:
    """Within the block, the decoder layers below `start` return the hidden states they receive, computing nothing
    (and adding nothing to a KV cache): pair it with `hook_layer_inputs` giving layer `start` the hidden states the
    skipped layers would have made. That is what an IG row changed at layer `start` only can use: every layer below
    computes for it exactly what the baseline forward computed. (Every supported family's decoder layer returns
    its hidden states as one tensor, transformers 5; an instance-level `forward` of a layer, as accelerate sets for
    offloading, is put back on leaving the block, also when it raises.)"""
    adapter = adapter or adapter_for(model)
    skipped = adapter.decoder_layers(model)[:start]
    saved = [layer.__dict__.get("forward") for layer in skipped]
    try:
        for layer in skipped:
            layer.forward = _pass_through
        yield
    finally:
        for layer, previous in zip(skipped, saved):
            if previous is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = previous
