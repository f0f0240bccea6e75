"""Benchmark: the fast attribution engine against the naive reference (DESIGN.md §6), in one run.

    .venv/bin/python benchmarks/attribution.py [--quick] [--world-model results/models/world]
        [--items results/items.parquet] [--threads N] [--steps 20] [--max-rows 256] [--prompts 3]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--shape full|quick|llama2-7b] [--lengths 64 256] [--no-world]

On a GPU (`benchmarks/gpu_check.sh`): `--device cuda --dtype bfloat16 --shape llama2-7b --lengths 64 256 --no-world`
builds the random model directly on the GPU in bf16, synchronizes the device around every timed call, and measures
the device's bf16 matrix-multiply rate (8192^3) instead of the CPU's fp32 rate.

Cases
- world: the trained world model (a local `save_pretrained` dir, produced by `make demo`) on its first few real
  single-hop prompts, "Q: {fact1_query[0]} A:" with answer `fact1_ans` from items.parquet. Skipped, with a note,
  when the model or the items are missing.
- random: a seeded random-weight LLaMA (hidden 768, 12 layers, FFN 3072, 12 heads, vocab 32000; float32, eval,
  frozen) at prompt lengths 16, 64 and 256 with random token ids and a single-token answer.
  `--quick` shrinks it to hidden 128, 2 layers, FFN 512, vocab 1000 at lengths 16 and 32, steps 4.
- multi-prompt (world): every single-hop paraphrase prompt of the first `--facts` facts of items.parquet (the
  workflow's "Q: {question} A:" prompts), attributed one prompt per call (`attribute_prompt`, the single-prompt
  engine) and as the workflow does it, one `attribute_prompts` call per fact (its paraphrases' rows share forwards,
  at most `--batch-max-rows` rows each, 1024 like the default profile); the two alternate, `--repeats` passes each
  (default 3), and each reports its median: prompts per second of both, the ratio, and the max relative difference
  of the maps. Skipped, with a note, when the model or the items are missing.

Per case
- engine_s, naive_s: mean seconds per prompt (time.perf_counter; each function is warmed up once per model on a
  short prompt first; the JSON also lists each prompt's seconds). The naive reference runs one prompt only at
  prompt lengths >= 256 (it takes minutes there).
- speedup = naive_s / engine_s.
- max_rel_diff = max|a - b| / max|b| of the attribution maps (a = engine, b = naive), the worst over the prompts
  that both ran. DESIGN.md §6 asks for ~1e-5 in fp32.
- engine_gflops = the analytic FLOP estimate below / engine_s, and fraction_of_matmul = that rate divided by this
  machine's fp32 matrix-multiply rate, measured in the same run with the same threads (torch.mm of two 2048 x 2048
  fp32 matrices, median of several timed calls after a warm-up, 2 n^3 FLOPs each).

Engine FLOP estimate (matrix multiplies only, the work a matmul rate can be compared with; norms, activations,
softmax, cache copies and hooks are memory-bound overhead and not counted as work):
    P      = parameters of the 2-D weight matrices of the decoder layers (no embeddings, no LM head)
    L      = decoder layers, d = heads * head_dim, h = hidden size, V = vocabulary size
    fwd(c) = 2 P + 4 L d c        one token forward that attends to c positions (QK^T and AV: 2 d c each, per layer)
    head   = 2 h V                LM head for one scored position (the engine keeps the last position's logits only)
    bwd(c) = 2 (P - P0) + 8 (L-1) d c + head
                                  backward of one token. Weights never require grad, so only input gradients are
                                  computed: 1x forward for the weight matmuls and the LM head; attention needs 4
                                  matmuls (dQ, dK, dV, dS) against 2 forward, so 2x there. The gradient stops at the
                                  lowest leaf, layer 0's FFN output projection: P0 = layer 0's matrices other than
                                  that projection (its attention, gate and up), and layer 0's attention gets none.
    prefill       = sum_{i=1}^{n-1} fwd(i) + head                 (prompt minus its last token, no grad)
    answer token j, context c = n + j:
        baseline  = fwd(c) + head
        rows      = R * (fwd(c) + head + bwd(c)),   R = L * (steps + 1)   (steps per layer plus one alpha = 0 row;
                                                                            the whole batch is back-propagated)
    total = prefill + sum_j (baseline + rows)
On small random LLaMAs (2-4 layers, prompts 32-128, 1-2 answer tokens) this came out 2-4 % above the count of
torch.utils.flop_counter.FlopCounterMode over a real engine call, so the achieved rate is, if anything, slightly
overstated. The naive reference is not FLOP-counted; it only sets the speed-up and the reference maps.

Output: a readable table on stdout, then, as the LAST line, one JSON object with the same figures.
Progress notes go to stderr. A recorded run belongs in benchmarks/RESULTS.md (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, in case knrecall is not installed

import torch  # noqa: E402

from knrecall.attribution.engine import attribute_prompt  # noqa: E402
from knrecall.attribution.reference import attribute_prompt_naive  # noqa: E402
from knrecall.models.adapters import adapter_for  # noqa: E402

FULL_RANDOM = dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_attention_heads=12,
                   num_key_value_heads=12, vocab_size=32000)
QUICK_RANDOM = dict(hidden_size=128, num_hidden_layers=2, intermediate_size=512, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=1000)
LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)
SHAPES = {"full": FULL_RANDOM, "quick": QUICK_RANDOM, "llama2-7b": LLAMA2_7B}
FULL_LENGTHS = (16, 64, 256)
QUICK_LENGTHS = (16, 32)
NAIVE_ONE_PROMPT_FROM = 256  # prompt length from which the naive reference is timed on one prompt only
MATMUL_N = 2048


@dataclass
class Prompt:
    prompt_ids: list[int]
    answer_ids: list[int]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Compare the fast attribution engine with the naive reference.")
    p.add_argument("--quick", action="store_true", help="tiny random model, lengths 16/32, steps 4 (a smoke test)")
    p.add_argument("--world-model", default="results/models/world", help="the trained world model directory")
    p.add_argument("--items", default="results/items.parquet", help="items with fact1_query / fact1_ans")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--steps", type=int, default=None, help="IG steps (default 20; 4 with --quick)")
    p.add_argument("--max-rows", type=int, default=256, help="the engine's rows per batch")
    p.add_argument("--prompts", type=int, default=None, help="prompts per case (default 3; 2 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the random model's dtype")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="the random model's shape")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths of the random model")
    p.add_argument("--no-world", action="store_true", help="skip the world model cases")
    p.add_argument("--facts", type=int, default=12, help="facts of the world multi-prompt case")
    p.add_argument("--repeats", type=int, default=3,
                   help="passes of each way in the multi-prompt case, alternating; each way's median is reported")
    p.add_argument("--batch-max-rows", type=int, default=1024,
                   help="the batched engine's rows per forward in the multi-prompt case (the workflow's max_rows)")
    return p.parse_args(argv)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- measurement ---------------------------------------------------------------------------------------------


def matmul_gflops(n: int = MATMUL_N, reps: int = 5, device: str = "cpu", dtype=torch.float32) -> float:
    """The device's matrix-multiply rate in `dtype`: torch.mm of two n x n matrices, median of `reps` after a
    warm-up."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.mm(a, b)
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def engine_flops(model, adapter, prompt_len: int, answer_len: int, steps: int) -> float:
    """The analytic FLOP count of one engine call (see the module docstring)."""
    config = model.config
    layers = adapter.decoder_layers(model)
    n_layers = len(layers)
    hidden, vocab = config.hidden_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    d_attn = config.num_attention_heads * head_dim
    params = sum(p.numel() for layer in layers for p in layer.parameters() if p.dim() >= 2)
    below = {id(p) for p in adapter.layers(model)[0].parameters()}  # layer 0's FFN output projection
    params0 = sum(p.numel() for p in layers[0].parameters() if p.dim() >= 2 and id(p) not in below)

    def fwd(c: int) -> float:
        return 2 * params + 4 * n_layers * d_attn * c

    head = 2 * hidden * vocab

    def bwd(c: int) -> float:
        return 2 * (params - params0) + 8 * (n_layers - 1) * d_attn * c + head

    total = 0.0
    if prompt_len > 1:  # prefill of the prompt minus its last token
        total += sum(fwd(i) for i in range(1, prompt_len)) + head
    rows = n_layers * (steps + 1)
    for j in range(answer_len):
        c = prompt_len + j
        total += fwd(c) + head  # baseline pass
        total += rows * (fwd(c) + head + bwd(c))
    return float(total)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def timed(fn, prompts: list[Prompt], device: str = "cpu") -> tuple[list[float], list]:
    """Seconds of each prompt, and the results."""
    results, seconds = [], []
    for prompt in prompts:
        sync(device)
        start = time.perf_counter()
        results.append(fn(prompt.prompt_ids, prompt.answer_ids))
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, results


def run_case(name: str, model, adapter, prompts: list[Prompt], steps: int, max_rows: int, matmul: float) -> dict:
    prompt_len = statistics.mean(len(p.prompt_ids) for p in prompts)
    answer_len = statistics.mean(len(p.answer_ids) for p in prompts)
    naive_prompts = prompts[:1] if prompt_len >= NAIVE_ONE_PROMPT_FROM else prompts
    log(f"[{name} len {prompt_len:g}] engine on {len(prompts)} prompt(s) ...")
    device = str(next(model.parameters()).device)
    engine_each, fast = timed(lambda p, a: attribute_prompt(model, adapter, p, a, steps=steps, max_rows=max_rows),
                              prompts, device)
    log(f"[{name} len {prompt_len:g}] naive on {len(naive_prompts)} prompt(s) ...")
    naive_each, slow = timed(lambda p, a: attribute_prompt_naive(model, adapter, p, a, steps=steps), naive_prompts,
                             device)
    engine_s, naive_s = statistics.mean(engine_each), statistics.mean(naive_each)
    diff = max(relative_difference(f.attributions.float().cpu(), s.attributions.float().cpu()) for f, s in zip(fast, slow))
    flops = statistics.mean(engine_flops(model, adapter, len(p.prompt_ids), len(p.answer_ids), steps) for p in prompts)
    gflops = flops / engine_s / 1e9
    return {
        "model": name,
        "prompt_len": round(prompt_len, 1),
        "answer_len": round(answer_len, 2),
        "prompts_engine": len(prompts),
        "prompts_naive": len(naive_prompts),
        "engine_s": engine_s,
        "naive_s": naive_s,
        "speedup": naive_s / engine_s,
        "max_rel_diff": diff,
        "engine_s_each": engine_each,
        "naive_s_each": naive_each,
        "engine_gflop_per_prompt": flops / 1e9,
        "engine_gflops": gflops,
        "fraction_of_matmul": gflops / matmul,
    }


def warm_up(model, adapter, prompt: Prompt, steps: int, max_rows: int) -> None:
    attribute_prompt(model, adapter, prompt.prompt_ids, prompt.answer_ids, steps=steps, max_rows=max_rows)
    attribute_prompt_naive(model, adapter, prompt.prompt_ids, prompt.answer_ids, steps=steps)


# --- cases ---------------------------------------------------------------------------------------------------


def world_cases(args, steps: int, n_prompts: int, matmul: float, notes: list[str]) -> list[dict]:
    model_dir, items_path = Path(args.world_model), Path(args.items)
    if not model_dir.is_dir():
        notes.append(f"world model skipped: no directory {model_dir} (run `make demo` or pass --world-model)")
        return []
    if not items_path.is_file():
        notes.append(f"world model skipped: no items file {items_path} (run `make demo` or pass --items)")
        return []
    import polars as pl

    from knrecall.errors import KnrecallError
    from knrecall.models.load import ModelSpec, load_model
    from knrecall.targets import teacher_forced_contexts

    model, tokenizer = load_model(ModelSpec(str(model_dir)))
    adapter = adapter_for(model)
    prompts: list[Prompt] = []
    for row in pl.read_parquet(items_path, columns=["fact1_query", "fact1_ans"]).iter_rows(named=True):
        if len(prompts) == n_prompts:
            break
        if not row["fact1_query"]:
            continue
        try:
            ids = teacher_forced_contexts(tokenizer, f"Q: {row['fact1_query'][0]} A:", row["fact1_ans"])
        except KnrecallError:
            continue
        prompts.append(Prompt(*ids))
    if not prompts:
        notes.append(f"world model skipped: no usable single-hop prompt in {items_path}")
        return []
    warm_up(model, adapter, prompts[0], steps, args.max_rows)
    return [run_case("world", model, adapter, prompts, steps, args.max_rows, matmul)]


def world_multi_prompt_case(args, steps: int, notes: list[str]) -> dict | None:
    """The world model's single-hop prompts of the first `--facts` facts, one prompt per call (`attribute_prompt`)
    against the workflow's batching (`attribute_prompts`, one call per fact: its paraphrases share forwards)."""
    model_dir, items_path = Path(args.world_model), Path(args.items)
    if not model_dir.is_dir() or not items_path.is_file():
        notes.append("multi-prompt case skipped: no world model or items (run `make demo` or pass --world-model "
                     "and --items)")
        return None
    from knrecall.attribution.batched import attribute_prompts
    from knrecall.data.conditions import single_hop_prompt
    from knrecall.data.facts import facts_of
    from knrecall.data.items import read_items
    from knrecall.models.load import ModelSpec, load_model
    from knrecall.targets import teacher_forced_contexts

    model, tokenizer = load_model(ModelSpec(str(model_dir)))
    adapter = adapter_for(model)
    facts, _ = facts_of(read_items(str(items_path)))
    templates = {"direct": "Q: {question} A:"}
    per_fact = [[teacher_forced_contexts(tokenizer, single_hop_prompt(q, templates), fact.answer)
                 for q in fact.questions] for fact in list(facts.values())[: args.facts]]
    n = sum(len(pairs) for pairs in per_fact)
    attribute_prompts(model, adapter, per_fact[0], steps=steps, max_rows=args.batch_max_rows)  # warm-up
    attribute_prompt(model, adapter, *per_fact[0][0], steps=steps, max_rows=args.max_rows)
    # the two ways alternate, `--repeats` times each, and each keeps its median: a shared machine's speed drifts by
    # tens of percent between one minute and the next, which a single pass of each would read as a ratio
    single_runs, batched_runs = [], []
    for repeat in range(args.repeats):
        log(f"[world multi-prompt] {n} prompts of {len(per_fact)} facts, one at a time "
            f"({repeat + 1}/{args.repeats}) ...")
        start = time.perf_counter()
        single = [attribute_prompt(model, adapter, p, a, steps=steps, max_rows=args.max_rows)
                  for pairs in per_fact for p, a in pairs]
        single_runs.append(time.perf_counter() - start)
        log(f"[world multi-prompt] batched per fact (max_rows {args.batch_max_rows}) ({repeat + 1}/{args.repeats}) ...")
        start = time.perf_counter()
        batched = [ig for pairs in per_fact
                   for ig in attribute_prompts(model, adapter, pairs, steps=steps, max_rows=args.batch_max_rows)]
        batched_runs.append(time.perf_counter() - start)
    single_s, batched_s = statistics.median(single_runs), statistics.median(batched_runs)
    diff = max(relative_difference(b.attributions, s.attributions) for b, s in zip(batched, single))
    # how far each fp32 engine is from the same maps in float64 (the single-prompt engine on a float64 copy): the
    # floor that two fp32 implementations with different reduction orders can agree to
    log("[world multi-prompt] float64 reference ...")
    model64 = copy.deepcopy(model).double()
    exact = [attribute_prompt(model64, adapter, p, a, steps=steps, max_rows=args.max_rows).attributions
             for pairs in per_fact for p, a in pairs]
    single_error = max(relative_difference(s.attributions.double(), e) for s, e in zip(single, exact))
    batched_error = max(relative_difference(b.attributions.double(), e) for b, e in zip(batched, exact))
    return {"model": "world", "facts": len(per_fact), "prompts": n, "max_rows_single": args.max_rows,
            "max_rows_batched": args.batch_max_rows, "single_prompts_per_s": n / single_s,
            "batched_prompts_per_s": n / batched_s, "speedup": single_s / batched_s, "max_rel_diff": diff,
            "repeats": args.repeats, "single_s_each": single_runs, "batched_s_each": batched_runs,
            "single_vs_float64": single_error, "batched_vs_float64": batched_error}


def random_cases(args, steps: int, n_prompts: int, matmul: float) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SHAPES[args.shape or ("quick" if args.quick else "full")]
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    torch.manual_seed(args.seed)
    config = LlamaConfig(**shape, max_position_embeddings=max(2048, max(lengths) + 8))
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):  # built where it runs: a 7B model never passes through host memory in fp32
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model = model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    name = f"random-llama-h{shape['hidden_size']}-L{shape['num_hidden_layers']}"
    g = torch.Generator().manual_seed(args.seed)

    def random_prompt(length: int) -> Prompt:
        ids = torch.randint(0, shape["vocab_size"], (length + 1,), generator=g).tolist()
        return Prompt(ids[:length], ids[length:])

    warm_up(model, adapter, random_prompt(8), steps, args.max_rows)
    return [
        run_case(name, model, adapter, [random_prompt(n) for _ in range(n_prompts)], steps, args.max_rows, matmul)
        for n in lengths
    ]


# --- report --------------------------------------------------------------------------------------------------


def table(cases: list[dict]) -> str:
    header = ("model", "prompt", "ans", "engine s", "naive s", "speed-up", "max rel diff", "engine GFLOP/s",
              "of matmul")
    rows = [
        (c["model"], f"{c['prompt_len']:g}", f"{c['answer_len']:g}", f"{c['engine_s']:.4f}", f"{c['naive_s']:.4f}",
         f"{c['speedup']:.1f}x", f"{c['max_rel_diff']:.2e}", f"{c['engine_gflops']:.2f}",
         f"{100 * c['fraction_of_matmul']:.1f}%")
        for c in cases
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r) -> str:
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = args.steps if args.steps is not None else (4 if args.quick else 20)
    n_prompts = args.prompts if args.prompts is not None else (2 if args.quick else 3)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    notes: list[str] = []

    on_gpu = args.device.startswith("cuda")
    n = 8192 if on_gpu else MATMUL_N
    log(f"measuring torch.mm {n}x{n} {args.dtype} on {args.device} ...")
    matmul = matmul_gflops(n, device=args.device, dtype=getattr(torch, args.dtype))
    cases = [] if args.no_world else world_cases(args, steps, n_prompts, matmul, notes)
    multi = None if args.no_world else world_multi_prompt_case(args, steps, notes)
    cases += random_cases(args, steps, n_prompts, matmul)

    print(f"attribution benchmark: engine vs naive reference ({'quick' if args.quick else 'full'})")
    print(f"torch {torch.__version__}, {threads} thread(s), {platform.processor() or platform.machine()}; "
          f"IG steps {steps}, rule gauss_legendre, target prob, max_rows {args.max_rows}")
    print(f"{args.dtype} matmul ({n}^3, torch.mm on {args.device}): {matmul:.2f} GFLOP/s")
    for note in notes:
        print(f"note: {note}")
    print("seconds are per prompt; speed-up = naive / engine; max rel diff = max|engine - naive| / max|naive|")
    print(table(cases))
    if multi:
        print(f"multi-prompt (world, {multi['prompts']} single-hop prompts of {multi['facts']} facts): one at a time "
              f"{multi['single_prompts_per_s']:.1f} prompts/s, batched per fact (max_rows {multi['max_rows_batched']}) "
              f"{multi['batched_prompts_per_s']:.1f} prompts/s: {multi['speedup']:.1f}x, max rel diff "
              f"{multi['max_rel_diff']:.2e}; against float64: one at a time {multi['single_vs_float64']:.2e}, "
              f"batched {multi['batched_vs_float64']:.2e}")
    summary = {
        "quick": args.quick,
        "torch": torch.__version__,
        "threads": threads,
        "steps": steps,
        "max_rows": args.max_rows,
        "matmul_gflops": matmul,
        "device": args.device,
        "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name() if on_gpu else None,
        "notes": notes,
        "cases": cases,
        "multi_prompt": multi,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
