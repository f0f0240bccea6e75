"""The FFN adapters: where each family's neurons are (both definitions), their width, and the one hook mechanism
over them."""

from __future__ import annotations

import typing
from types import SimpleNamespace

import pytest
import torch
from tiny_models import (FAMILIES, GATED_FAMILIES, HIDDEN, LAYERS, PRE_ACTIVATION_MODULES, WIDTHS,
                         explicit_pre_activation_hooks, tiny_config, tiny_model, tiny_model_dir)
from transformers import BertConfig, GPT2Config

from knrecall.config import AttributionParams
from knrecall.errors import KnrecallError
from knrecall.models import adapters
from knrecall.models.adapters import (NEURON_DEFINITIONS, SUPPORTED_FAMILIES, adapter_for, hook_layer_inputs,
                                     hook_neurons, num_layers, skip_layers_below)
from knrecall.models.load import ModelSpec, load_model

# Written out independently of the adapters' own table: the name of decoder layer i, the output projection in it ...
LAYER_NAMES = {**{family: "model.layers.{i}" for family in GATED_FAMILIES}, "gpt2": "transformer.h.{i}",
               "gptj": "transformer.h.{i}", "gpt_neox": "gpt_neox.layers.{i}", "opt": "model.decoder.layers.{i}"}
PROJECTIONS = {**{family: "mlp.down_proj" for family in GATED_FAMILIES}, "gpt2": "mlp.c_proj", "gptj": "mlp.fc_out",
               "gpt_neox": "mlp.dense_4h_to_h", "opt": "fc2"}
# ... the config attribute holding the FFN width ...
WIDTH_KEYS = {**{family: "intermediate_size" for family in FAMILIES}, "gpt2": "n_inner", "gptj": "n_inner",
              "opt": "ffn_dim"}


# ... and how to compute the projection's input by hand from the input of module `capture` (relative to layer i).
def _gated(mlp, x):
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def _phi3(mlp, x):
    gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
    return mlp.activation_fn(gate) * up


RECIPES = {
    **{family: ("mlp", _gated) for family in GATED_FAMILIES},
    "phi3": ("mlp", _phi3),
    "gpt2": ("mlp", lambda mlp, x: mlp.act(mlp.c_fc(x))),
    "gptj": ("mlp", lambda mlp, x: mlp.act(mlp.fc_in(x))),
    "gpt_neox": ("mlp", lambda mlp, x: mlp.act(mlp.dense_h_to_4h(x))),
    "opt": ("fc1", lambda fc1, x: torch.relu(fc1(x))),
}

BATCH, SEQ = 2, 5


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 64, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _module(model, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def _name(family: str, i: int, inside: str) -> str:
    """The full module name of `inside` (a dotted path) in decoder layer i."""
    return f"{LAYER_NAMES[family].format(i=i)}.{inside}"


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def test_supported_families_are_the_tested_ones():
    assert set(SUPPORTED_FAMILIES) == set(FAMILIES)
    assert len(FAMILIES) == 13


def test_tiny_models_are_small_float32_eval_and_deterministic():
    a, b, c = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert not a.training and a.dtype == torch.float32
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    for family in FAMILIES:
        assert WIDTHS[family] != 4 * HIDDEN


def test_adapter_from_model_and_from_config(family_model):
    family, model = family_model
    assert adapter_for(model).family == family
    assert adapter_for(model.config) == adapter_for(model)
    assert adapter_for(tiny_config(family)).family == family


def test_layers_are_the_output_projections_in_order(family_model):
    family, model = family_model
    layers = adapter_for(model).layers(model)
    assert len(layers) == LAYERS == model.config.num_hidden_layers == num_layers(model)
    for i, module in enumerate(layers):
        assert module is _module(model, _name(family, i, PROJECTIONS[family]))


def test_layers_found_from_the_base_model_too(family_model):
    family, model = family_model
    adapter = adapter_for(model)
    assert model.base_model is not model
    assert all(a is b for a, b in zip(adapter.layers(model.base_model), adapter.layers(model), strict=True))


def test_width_is_the_configs_ffn_size(family_model):
    family, model = family_model
    assert adapter_for(model).width(model) == WIDTHS[family] == getattr(model.config, WIDTH_KEYS[family])


def test_hook_captures_inputs_of_shape_batch_seq_width(family_model):
    family, model = family_model
    adapter = adapter_for(model)
    seen: dict[int, tuple] = {}

    def capture(i, x):
        seen[i] = tuple(x.shape)

    with hook_neurons(model, adapter, capture):
        model(_ids())
    assert seen == {i: (BATCH, SEQ, adapter.width(model)) for i in range(LAYERS)}
    assert all(shape[-1] == WIDTHS[family] for shape in seen.values())


def test_captured_input_equals_the_hand_computed_activation(family_model):
    family, model = family_model
    capture_name, recipe = RECIPES[family]
    mlp_inputs, ffn_inputs = {}, {}
    handles = [
        _module(model, _name(family, i, capture_name)).register_forward_pre_hook(
            lambda module, args, i=i: mlp_inputs.__setitem__(i, (module, args[0]))
        )
        for i in range(LAYERS)
    ]
    try:
        with hook_neurons(model, adapter_for(model), lambda i, x: ffn_inputs.__setitem__(i, x)):
            with torch.no_grad():
                model(_ids())
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(ffn_inputs) == list(range(LAYERS))
    for i in range(LAYERS):
        module, x = mlp_inputs[i]
        with torch.no_grad():
            expected = recipe(module, x).reshape(BATCH, SEQ, -1)  # OPT runs its FFN on flattened tokens
        assert expected.shape == (BATCH, SEQ, WIDTHS[family])
        torch.testing.assert_close(ffn_inputs[i], expected, rtol=1e-6, atol=1e-7)


def test_phi3_width_is_half_the_fused_gate_up_projection():
    model = tiny_model("phi3")
    fused = _module(model, "model.layers.0.mlp.gate_up_proj")
    assert fused.out_features == 2 * adapter_for(model).width(model)


def test_zeroing_one_layer_changes_logits_and_identity_does_not(family_model):
    family, model = family_model
    adapter = adapter_for(model)
    ids = _ids()
    with torch.no_grad():
        base = model(ids).logits
        for layer in range(LAYERS):
            with hook_neurons(model, adapter, lambda i, x, layer=layer: torch.zeros_like(x) if i == layer else None):
                zeroed = model(ids).logits
            assert (zeroed - base).abs().max() > 1e-4, f"{family}: zeroing layer {layer} changed nothing"
        with hook_neurons(model, adapter, lambda i, x: x):
            identity = model(ids).logits
        with hook_neurons(model, adapter, lambda i, x: None):
            untouched = model(ids).logits
    assert torch.equal(identity, base)
    assert torch.equal(untouched, base)


def test_replacement_flows_into_the_projection(family_model):
    family, model = family_model
    adapter = adapter_for(model)
    projection = adapter.layers(model)[0]
    outputs = []
    handle = projection.register_forward_hook(lambda module, args, out: outputs.append(out))
    try:
        with torch.no_grad(), hook_neurons(model, adapter, lambda i, x: torch.zeros_like(x) if i == 0 else None):
            model(_ids())
    finally:
        handle.remove()
    bias = projection.bias if projection.bias is not None else torch.zeros(HIDDEN)
    assert torch.equal(outputs[0].reshape(BATCH, SEQ, HIDDEN), bias.expand(BATCH, SEQ, HIDDEN))


def _no_hooks_left(model) -> bool:
    """No forward (pre-)hook on any module (the projections and the decoder layers included)."""
    assert adapter_for(model).layers(model)[0] in list(model.modules())
    return all(not module._forward_pre_hooks and not module._forward_hooks for module in model.modules())


def test_hooks_are_removed_after_an_exception(family_model):
    family, model = family_model
    adapter = adapter_for(model)
    with pytest.raises(RuntimeError, match="in the body"):
        with hook_neurons(model, adapter, lambda i, x: None):
            assert not _no_hooks_left(model)
            raise RuntimeError("in the body")
    assert _no_hooks_left(model)

    def failing(i, x):
        raise ValueError("in the hook")

    with pytest.raises(ValueError, match="in the hook"):
        with hook_neurons(model, adapter, failing):
            model(_ids())
    assert _no_hooks_left(model)


def test_a_replacement_of_the_wrong_shape_is_an_error():
    model = tiny_model("llama")
    with pytest.raises(KnrecallError, match="shape"):
        with hook_neurons(model, None, lambda i, x: x[..., :-1]):
            model(_ids())
    assert _no_hooks_left(model)


def test_gpt2_n_inner_none_means_four_times_hidden():
    model = tiny_model("gpt2")
    config = GPT2Config(**{**model.config.to_dict(), "n_inner": None})
    assert adapter_for(config).config_width(config) == 4 * HIDDEN


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt", "gpt_neox"])
def test_config_width_disagreeing_with_the_weights_is_an_error(family):
    model = tiny_model(family)
    key = WIDTH_KEYS[family]
    # GPT-2 with n_inner unset would mean 4 x hidden = 128, but the weights take 40 inputs
    setattr(model.config, key, None if family == "gpt2" else WIDTHS[family] + 1)
    with pytest.raises(KnrecallError, match=f"{key} = .* takes {WIDTHS[family]} inputs"):
        adapter_for(model).width(model)


@pytest.mark.parametrize(
    "config", [BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16),
               SimpleNamespace(model_type="mamba")], ids=["bert", "mamba"])
def test_unknown_family_is_a_clear_error(config):
    with pytest.raises(KnrecallError) as info:
        adapter_for(config)
    message = str(info.value)
    assert message.startswith(f"model family '{config.model_type}' is not supported; supported: ")
    assert all(family in message for family in FAMILIES)


def test_unknown_family_model_is_an_error_too():
    with pytest.raises(KnrecallError, match="'mamba' is not supported"):
        num_layers(SimpleNamespace(config=SimpleNamespace(model_type="mamba")))


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tiny_model_loads_by_local_path(family, tmp_path):
    path = tiny_model_dir(family, tmp_path / family)
    assert list(path.glob("*.safetensors"))
    model, tokenizer = load_model(ModelSpec(str(path)))
    adapter = adapter_for(model)
    assert adapter.family == family and adapter.width(model) == WIDTHS[family] and num_layers(model) == LAYERS
    ids = tokenizer(["a b c"], return_tensors="pt").input_ids
    seen = {}
    with torch.no_grad(), hook_neurons(model, adapter, lambda i, x: seen.__setitem__(i, x.shape)):
        logits = model(ids).logits
    assert seen == {i: (1, ids.shape[1], WIDTHS[family]) for i in range(LAYERS)}
    with torch.no_grad():
        expected = tiny_model(family)(ids).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_a_replacement(family_model):
    family, model = family_model
    scale = torch.ones(WIDTHS[family], requires_grad=True)
    with hook_neurons(model, adapter_for(model), lambda i, x: x * scale if i == 0 else None):
        logits = model(_ids()).logits
    (grad,) = torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), scale)
    assert grad.shape == (WIDTHS[family],) and grad.abs().max() > 0


# ------------------------------------------------------------------------------------------ pre_activation neurons
def test_the_default_definition_is_ffn_input(family_model):
    family, model = family_model
    assert NEURON_DEFINITIONS == ("ffn_input", "pre_activation")
    # the params model (torch-free, so it spells them out) offers exactly these, with the same default
    field = AttributionParams.model_fields["neuron"]
    assert typing.get_args(field.annotation) == NEURON_DEFINITIONS and field.default == NEURON_DEFINITIONS[0]
    assert adapter_for(model) == adapter_for(model, "ffn_input")
    assert adapter_for(model).neuron == "ffn_input" and not adapter_for(model).reads_output


def test_pre_activation_layers_are_the_first_projections(family_model):
    family, model = family_model
    adapter = adapter_for(model, "pre_activation")
    assert adapter.reads_output
    layers = adapter.layers(model)
    assert len(layers) == LAYERS
    for i, module in enumerate(layers):
        assert module is _module(model, PRE_ACTIVATION_MODULES[family].format(i=i))
    # the width stays the config's FFN size (for Phi-3 half of the fused projection's outputs)
    assert adapter.width(model) == WIDTHS[family] == getattr(model.config, WIDTH_KEYS[family])


def test_pre_activation_hook_reads_the_first_projections_output(family_model):
    family, model = family_model
    ids = _ids()
    explicit, through_knrecall = {}, {}
    with torch.no_grad(), explicit_pre_activation_hooks(model, lambda i, x: explicit.__setitem__(i, x.clone()),
                                                        batch=BATCH):
        with hook_neurons(model, adapter_for(model, "pre_activation"),
                          lambda i, x: through_knrecall.__setitem__(i, x.clone())):
            model(ids)
    assert sorted(through_knrecall) == sorted(explicit) == list(range(LAYERS))
    for i in range(LAYERS):
        assert through_knrecall[i].shape == (BATCH, SEQ, WIDTHS[family])
        assert torch.equal(through_knrecall[i], explicit[i])
    # and it is not the other definition's tensor
    ffn_inputs = {}
    with torch.no_grad(), hook_neurons(model, adapter_for(model), lambda i, x: ffn_inputs.__setitem__(i, x.clone())):
        model(ids)
    assert not torch.allclose(ffn_inputs[0], through_knrecall[0], atol=1e-3)


def test_pre_activation_hook_reads_before_the_activation_function():
    """GPT-2: what the hook sees is c_fc(x); the output projection's input is gelu of it."""
    model = tiny_model("gpt2")
    seen = {}
    with torch.no_grad():
        with hook_neurons(model, adapter_for(model, "pre_activation"), lambda i, x: seen.__setitem__(("pre", i), x)):
            with hook_neurons(model, adapter_for(model), lambda i, x: seen.__setitem__(("in", i), x)):
                model(_ids())
    mlp = model.transformer.h[0].mlp
    torch.testing.assert_close(mlp.act(seen[("pre", 0)]), seen[("in", 0)], rtol=1e-6, atol=1e-7)


def test_pre_activation_replacement_equals_an_explicit_forward_hook(family_model):
    """Scaling pre-activation neurons through knrecall replaces the projection's output exactly as a plain forward
    hook that does the same (for Phi-3: the gate half only)."""
    family, model = family_model
    ids = _ids()
    generator = torch.Generator().manual_seed(1)
    scales = [torch.rand(WIDTHS[family], generator=generator) * 2 for _ in range(LAYERS)]
    scales[1][:5] = 0.0  # suppress a few

    def scale(i, x):
        return x * scales[i]

    with torch.no_grad():
        base = model(ids).logits
        with explicit_pre_activation_hooks(model, scale, batch=BATCH):
            expected = model(ids).logits
        with hook_neurons(model, adapter_for(model, "pre_activation"), scale):
            got = model(ids).logits
    assert _no_hooks_left(model)
    assert (expected - base).abs().max() > 1e-4
    assert torch.equal(got, expected)


def test_pre_activation_hooks_are_removed_after_an_exception(family_model):
    family, model = family_model
    adapter = adapter_for(model, "pre_activation")

    def failing(i, x):
        raise ValueError("in the hook")

    with pytest.raises(ValueError, match="in the hook"):
        with hook_neurons(model, adapter, failing):
            assert not _no_hooks_left(model)
            model(_ids())
    assert _no_hooks_left(model)
    with pytest.raises(KnrecallError, match="shape"):
        with hook_neurons(model, adapter, lambda i, x: x[..., :-1]):
            model(_ids())
    assert _no_hooks_left(model)


def test_gradients_flow_through_a_pre_activation_replacement(family_model):
    family, model = family_model
    scale = torch.ones(WIDTHS[family], requires_grad=True)
    with hook_neurons(model, adapter_for(model, "pre_activation"), lambda i, x: x * scale if i == 1 else None):
        logits = model(_ids()).logits
    (grad,) = torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), scale)
    assert grad.shape == (WIDTHS[family],) and grad.abs().max() > 0


def test_pre_activation_width_disagreeing_with_the_weights_is_an_error():
    model = tiny_model("phi3")
    model.config.intermediate_size = WIDTHS["phi3"] + 2
    with pytest.raises(KnrecallError, match="'mlp.gate_up_proj' gives 48 gate outputs"):
        adapter_for(model, "pre_activation").width(model)


def test_unknown_neuron_definition_is_an_error():
    with pytest.raises(KnrecallError, match="unknown neuron definition 'post_activation' .*ffn_input, pre_activation"):
        adapter_for(tiny_config("llama"), "post_activation")


def test_family_without_a_pre_activation_module_is_one_line_naming_family_and_definition(monkeypatch):
    monkeypatch.setitem(adapters._FAMILIES, "gpt_neox", adapters._FAMILIES["gpt_neox"]._replace(first_projection=None))
    assert adapter_for(tiny_config("gpt_neox")).neuron == "ffn_input"  # the default still works
    with pytest.raises(KnrecallError) as info:
        adapter_for(tiny_config("gpt_neox"), "pre_activation")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model family 'gpt_neox' has no pre-activation neuron (attribution.neuron: "
                              "pre_activation)")


def _layer_inputs(model, ids) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}

    def capture(i, hidden):
        seen[i] = hidden.detach().clone()

    with torch.no_grad(), hook_layer_inputs(model, None, capture):
        logits = model(ids).logits
    return seen, logits


def test_layer_inputs_are_the_previous_layers_outputs(family_model):
    family, model = family_model
    ids = _ids()
    seen, _ = _layer_inputs(model, ids)
    outputs = {}
    handles = [_module(model, LAYER_NAMES[family].format(i=i)).register_forward_hook(
        lambda m, a, out, i=i: outputs.__setitem__(i, (out[0] if isinstance(out, tuple) else out).detach().clone()))
        for i in range(LAYERS)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == list(range(LAYERS)) and seen[0].shape == (BATCH, SEQ, HIDDEN)
    for i in range(1, LAYERS):
        assert torch.equal(seen[i], outputs[i - 1]), i
    assert _no_hooks_left(model)


def test_starting_at_a_layer_with_its_inputs_gives_the_same_logits(family_model):
    """The layers below `start` skipped, layer `start` given the hidden states a plain forward gave it: the same
    logits, for every start; a wrong input (another layer's) changes them; every layer is itself again after."""
    family, model = family_model
    ids = _ids(1)
    seen, plain = _layer_inputs(model, ids)
    layers = adapter_for(model).decoder_layers(model)
    for start in range(LAYERS):
        with torch.no_grad(), skip_layers_below(model, None, start), \
                hook_layer_inputs(model, None, lambda i, hidden: seen[start] if i == start else None):
            skipped = model(ids).logits
        torch.testing.assert_close(skipped, plain, rtol=1e-5, atol=1e-6)
    with torch.no_grad(), skip_layers_below(model, None, LAYERS - 1), \
            hook_layer_inputs(model, None, lambda i, hidden: seen[0] if i == LAYERS - 1 else None):
        wrong = model(ids).logits
    assert (wrong - plain).abs().max() > 1e-3
    assert all("forward" not in layer.__dict__ for layer in layers) and _no_hooks_left(model)


def test_skipped_layers_are_restored_after_an_exception_and_keep_their_own_forward():
    model = tiny_model("llama")
    layers = adapter_for(model).decoder_layers(model)
    own = layers[0].forward  # an instance-level forward, as accelerate sets for offloading
    layers[0].forward = own
    with pytest.raises(RuntimeError, match="in the body"):
        with skip_layers_below(model, None, 2):
            assert layers[0].forward is not own and layers[1].forward.__name__ == "_pass_through"
            raise RuntimeError("in the body")
    assert layers[0].__dict__["forward"] is own and "forward" not in layers[1].__dict__
    del layers[0].forward
    with pytest.raises(KnrecallError, match="shape"):
        with hook_layer_inputs(model, None, lambda i, hidden: hidden[..., :-1]):
            model(_ids())
    assert _no_hooks_left(model)
