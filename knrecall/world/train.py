"""Train the world's small LLaMA-architecture model on the CPU (DESIGN.md §5).

Each corpus example is `[BOS] prompt answer . [EOS]`; the loss is on the answer, the full stop and EOS, and the
LM head runs on those positions only (the logits of prompt positions would be thrown away). The model is saved with
`save_pretrained` beside its tokenizer, so it loads through the same `from_pretrained` path as any Hugging Face
checkpoint.

Optimizers (`optimizer`): `muon` (default) trains the decoder's weight matrices with Muon (`knrecall.world.muon`)
and the embeddings and norm weights with AdamW; `adamw` trains everything with AdamW (the recipe before Muon). Both
follow one schedule: linear warm-up, then cosine decay to 10 % of each optimizer's peak rate.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from knrecall.errors import KnrecallError
from knrecall.world.muon import Muon

IGNORE = -100


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    seed: int
    optimizer: str = "muon"  # muon | adamw
    muon_learning_rate: float = 0.004
    head_on_answers_only: bool = True  # False: the LM head on every position (the recipe before; benchmarks only)


def encode_example(tokenizer: PreTrainedTokenizerFast, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE on the prompt) of `[BOS] prompt answer . [EOS]`."""
    prompt_ids = tokenizer(prompt).input_ids
    answer_ids = tokenizer(f" {answer} .", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def make_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random, pad_id: int,
                 pool: int = 32):
    """Shuffled batches of similar length: the shuffled examples are cut into pools of `pool` batches, each pool is
    sorted by length and cut into batches, and the batches are shuffled (short QA lines and long chain-of-thought
    lines then rarely share a batch, so little of it is padding)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lambda i: len(examples[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    for batch in batches:
        chunk = [examples[i] for i in batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, (x, y) in enumerate(chunk):  # right padding: fine for training a causal model
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
        yield ids, labels


def learning_rate_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizers(model: LlamaForCausalLM, recipe: TrainRecipe) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices (embeddings included) and none on vectors; with `muon`, the decoder's
    weight matrices go to Muon instead. Each group keeps its peak rate as `peak_lr` for the schedule."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    named = list(model.named_parameters())
    vectors = [p for _, p in named if p.ndim < 2]
    if recipe.optimizer == "muon":
        matrices = [p for _, p in named if p.ndim >= 2 and id(p) not in embeddings]
        adam_matrices = [p for _, p in named if p.ndim >= 2 and id(p) in embeddings]
    elif recipe.optimizer == "adamw":
        matrices, adam_matrices = [], [p for _, p in named if p.ndim >= 2]
    else:
        raise KnrecallError(f"world model: unknown optimizer '{recipe.optimizer}' (known: muon, adamw)")
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        [{"params": adam_matrices, "weight_decay": recipe.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
        lr=recipe.learning_rate, betas=(0.9, 0.98))]
    if matrices:
        optimizers.append(Muon(matrices, lr=recipe.muon_learning_rate, weight_decay=recipe.weight_decay))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def answer_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens (what `model(input_ids, labels=...).loss` computes), with the LM
    head applied to the positions that predict a labelled token only."""
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    scored = targets != IGNORE
    return torch.nn.functional.cross_entropy(model.lm_head(hidden[scored]).float(), targets[scored])


def train_world_model(
    corpus: list[dict[str, str]],
    tokenizer: PreTrainedTokenizerFast,
    shape: ModelShape,
    recipe: TrainRecipe,
    out_dir: Path,
    log_path: Path,
    threads: int,
) -> dict[str, Any]:
    """Train, save the model and tokenizer into `out_dir`, append the log to `log_path`; return a summary."""
    if not corpus:
        raise KnrecallError("world corpus is empty: nothing to train on")
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(threads)
    rng = random.Random(recipe.seed)
    examples = [encode_example(tokenizer, ex["prompt"], ex["answer"]) for ex in corpus]
    max_len = max(len(ids) for ids, _ in examples)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=max(64, 2 ** math.ceil(math.log2(max_len * 4))),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    optimizers = make_optimizers(model, recipe)
    steps_per_epoch = math.ceil(len(examples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    model.train()
    start = time.perf_counter()
    step, tokens, last_loss = 0, 0, float("nan")
    with log_path.open("w") as log, tqdm(total=total, desc="train world model", unit="step", file=sys.stderr, mininterval=5) as bar:
        for epoch in range(recipe.epochs):
            epoch_start, epoch_loss, epoch_batches = time.perf_counter(), 0.0, 0
            for ids, labels in make_batches(examples, recipe.batch_size, rng, tokenizer.pad_token_id):
                schedule = learning_rate_at(step, total, 1.0, recipe.warmup_steps)
                for optimizer in optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = group["peak_lr"] * schedule
                # No attention mask: with right padding and a causal model, pads never reach real tokens.
                if recipe.head_on_answers_only:
                    loss = answer_loss(model, ids, labels)
                else:
                    loss = model(input_ids=ids, labels=labels).loss
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                for optimizer in optimizers:
                    optimizer.step()
                step += 1
                tokens += int((ids != tokenizer.pad_token_id).sum())
                epoch_loss += loss.item()
                epoch_batches += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
            last_loss = epoch_loss / epoch_batches
            elapsed = time.perf_counter() - start
            record = {"epoch": epoch + 1, "step": step, "loss": round(last_loss, 5), "lr": schedule,
                      "tokens": tokens, "seconds": round(elapsed, 2),
                      "epoch_seconds": round(time.perf_counter() - epoch_start, 2),
                      "tokens_per_second": round(tokens / elapsed)}
            log.write(json.dumps(record) + "\n")
            log.flush()
    train_seconds = time.perf_counter() - start
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "model_parameters": n_params,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(tokens / train_seconds),
        "seconds_per_epoch": round(train_seconds / recipe.epochs, 2),
        "optimizer": recipe.optimizer,
        "steps": step,
        "epochs": recipe.epochs,
        "tokens": tokens,
        "final_loss": round(last_loss, 5),
        "n_examples": len(examples),
    }
