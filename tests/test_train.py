"""Training the world model: Muon, the optimizer split, the answer-only loss, and a short real training run."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from knrecall.errors import KnrecallError
from knrecall.world.generate import WorldSize, generate_world
from knrecall.world.muon import Muon, orthogonalize
from knrecall.world.tokenizer import world_tokenizer
from knrecall.world.train import (
    IGNORE,
    ModelShape,
    TrainRecipe,
    answer_loss,
    make_optimizers,
    train_world_model,
)


def small_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


def test_orthogonalize_pushes_every_singular_value_towards_one():
    torch.manual_seed(0)
    matrices = torch.randn(3, 40, 16) * torch.tensor([0.01, 1.0, 100.0])[:, None, None]
    matrices[:, :, 0] *= 5  # one direction far stronger than the rest
    for matrix, ortho in zip(matrices, orthogonalize(matrices)):
        before = torch.linalg.svdvals(matrix)
        after = torch.linalg.svdvals(ortho)
        assert before.max() / before.min() > 10
        assert after.min() > 0.5 and after.max() < 1.5, after  # the quintic iteration's band, whatever the scale
        assert ortho.shape == matrix.shape
    wide = orthogonalize(torch.randn(1, 8, 30))  # wide matrices are iterated without transposing
    assert torch.linalg.svdvals(wide[0]).min() > 0.5


def test_muon_step_moves_each_matrix_by_its_orthogonalised_momentum():
    torch.manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(12, 8))
    start = weight.detach().clone()
    optimizer = Muon([weight], lr=0.01, weight_decay=0.0)
    weight.grad = torch.randn(12, 8)
    grad = weight.grad.clone()
    optimizer.step()
    momentum = 0.05 * grad  # first step: buffer = (1 - 0.95) * grad; Nesterov update = grad.lerp(buffer, 0.95)
    expected = start - 0.01 * 0.2 * 12 ** 0.5 * orthogonalize(grad.lerp(momentum, 0.95)[None])[0]
    assert torch.allclose(weight.detach(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))], lr=0.01)


def test_optimizer_split():
    model = small_llama()
    embedding = model.get_input_embeddings().weight
    muon_recipe = TrainRecipe(1, 4, 0.004, 0.1, 2, 0, "muon", 0.008)
    adam, muon = make_optimizers(model, muon_recipe)
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    every = {id(p) for p in model.parameters()}
    assert adam_ids | muon_ids == every and not adam_ids & muon_ids
    assert id(embedding) in adam_ids  # embeddings (tied with the LM head) and norms stay with AdamW
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert {id(p) for p in model.parameters() if p.ndim < 2} <= adam_ids
    assert muon.param_groups[0]["peak_lr"] == 0.008 and adam.param_groups[0]["peak_lr"] == 0.004
    (only_adam,) = make_optimizers(model, TrainRecipe(1, 4, 0.002, 0.1, 2, 0, "adamw"))
    assert {id(p) for g in only_adam.param_groups for p in g["params"]} == every
    assert [g["weight_decay"] for g in only_adam.param_groups] == [0.1, 0.0]
    with pytest.raises(KnrecallError, match="unknown optimizer"):
        make_optimizers(model, TrainRecipe(1, 4, 0.002, 0.1, 2, 0, "sgd"))


def test_answer_loss_equals_the_full_head_loss():
    model = small_llama()
    ids = torch.randint(4, 50, (3, 9))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 6:] = ids[0, 6:]
    labels[1, 3:5] = ids[1, 3:5]
    labels[2, 8] = ids[2, 8]
    full = model(input_ids=ids, labels=labels).loss
    assert answer_loss(model, ids, labels).item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_training_learns_is_deterministic_and_saves_a_checkpoint(tmp_path, optimizer):
    world = generate_world(0, WorldSize(8, 3, 2, 2, 2, 2), 0.3, 0.2, 0.5, "Q: {question} A:")
    tokenizer = world_tokenizer(world["corpus"], world["items"], {"direct": "Q: {question} A:"})
    shape = ModelShape(32, 64, 2, 2)
    recipe = TrainRecipe(4, 16, 0.004, 0.1, 5, 0, optimizer, 0.008)
    runs = []
    for name in ("a", "b"):
        summary = train_world_model(world["corpus"], tokenizer, shape, recipe, tmp_path / name,
                                    tmp_path / f"{name}.jsonl", threads=1)
        runs.append(summary)
    log = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4] and log[-1]["loss"] < log[0]["loss"] / 2
    assert all(r["epoch_seconds"] > 0 and r["tokens_per_second"] > 0 for r in log)
    assert runs[0]["optimizer"] == optimizer and runs[0]["tokens_per_second"] > 0
    assert runs[0]["final_loss"] == runs[1]["final_loss"]  # same seed, same machine: same model
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
