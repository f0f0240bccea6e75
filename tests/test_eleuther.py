"""Agreement with EleutherAI's `knowledge-neurons` package (PyPI 0.0.2, installed by the test extras), run for real.

On a seeded random GPT-2 (`GPT2LMHeadModel(GPT2Config(...))`, default attention) with a byte-level BPE tokenizer
trained here (no downloads), knrecall under `attribution.neuron: pre_activation`, `rule: linspace`, `target: prob`
must give EleutherAI's `KnowledgeNeurons(model, tokenizer, model_type="gpt2").get_scores(...)` within 1e-4
relative in every layer, and its coarse and refined neuron sets with the equivalent thresholds.

What EleutherAI's code does (knowledge_neurons/knowledge_neurons.py of 0.0.2, `get_scores_for_layer`; the
repository's later `attribution_method="integrated_grads"` branch is the same code):

- the neurons are the OUTPUT of `transformer.h[l].mlp.c_fc`, before GELU (`input_ff_attr = "mlp.c_fc"`; the
  `Patch` module replaces `x[:, -1, :]` of that output): knrecall's `pre_activation`;
- `scaled_input`: the baseline activations at the last position times `torch.linspace(0, 1, steps)` (both ends);
  the gradients of `F.softmax(logits[:, -1])[:, target]` (the probability, not the log-probability) are summed over
  the steps and multiplied by `baseline_activations / steps`: w̄ · mean_k ∂p(α_k w̄)/∂w, knrecall's `linspace` rule
  (equal weights 1/m on m nodes including 0 and 1) with `target: prob`;
- `get_coarse_neurons(..., adaptive_threshold=t)`: neurons with score > t × the maximum score over all layers:
  knrecall's `kns.coarse_threshold` t (knrecall also requires a positive score; both agree when the maximum is
  positive);
- `get_refined_neurons(prompts, ..., p)`: neurons coarse in MORE THAN n·p of the n prompts (strictly), with p in
  [0, 1) and no adaptive mode; knrecall keeps share ≥ `kns.refine_fraction`, so EleutherAI's p is knrecall's
  (floor(n·p) + 1) / n;
- multi-token targets: with `model_type="gpt2"` only one target token can be attributed (two raise "grad can be
  implicitly created only for scalar outputs": `probs[:, target_ids]` is not a scalar per row); with
  `model_type="gpt"` token i's map is computed after appending the model's ARGMAX token (decoded and re-tokenized),
  not the gold one, and the maps are averaged: equal to knrecall's teacher-forced mean when the gold answer is the
  model's greedy continuation, different otherwise; an error inside `get_scores` leaves its `Patch` module in the
  model (the patching has no try/finally);
- `modify_activations(..., mode="suppress" | "enhance")` sets the chosen c_fc outputs at the last position to 0 or
  multiplies them by 2: knrecall's interventions with `pre_activation`, `position_policy: last_prompt`.
"""

from __future__ import annotations

import copy
import math

import polars as pl
import pytest
import torch
from knowledge_neurons import KnowledgeNeurons
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from knrecall.attribution.batched import attribute_prompts
from knrecall.attribution.engine import attribute_prompt
from knrecall.attribution.kns import Selection, select_kns
from knrecall.attribution.reference import attribute_prompt_naive
from knrecall.attribution.run import AttributionSettings, attribute_shard
from knrecall.data.items import Item
from knrecall.interventions.generate import greedy_generate
from knrecall.models.adapters import adapter_for
from knrecall.targets import teacher_forced_contexts

TEXT = """\
Paris is the capital of France. The capital of France is Paris. France has its capital in Paris.
Berlin is the capital of Germany. The capital of Germany is Berlin. Germany has its capital in Berlin.
Rome is the capital of Italy. The capital of Italy is Rome. Italy has its capital in Rome.
Madrid is the capital of Spain. The capital of Spain is Madrid. The Eiffel Tower is located in Paris.
The official language of France is French. Buenos Aires is the capital of Argentina.
""".splitlines()
# four paraphrases of one fact, answer " Paris" (one token)
PARAPHRASES = ["The capital of France is", "France has its capital in", "The Eiffel Tower is located in",
               "Paris is the capital of"]
ANSWER = "Paris"
STEPS, BATCH = 10, 5  # EleutherAI needs steps % batch_size == 0
TOLERANCE = 1e-4


def _tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (no BOS added, leading spaces belong to the next word), trained here."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    core.train_from_iterator(TEXT * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def setup():
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    # initializer_range 0.2 (not GPT-2's 0.02) puts the pre-activations in GELU's non-linear range, where the
    # two neuron definitions give clearly different maps, so agreement is not an accident of linearity
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4, n_positions=64,
                        initializer_range=0.2, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    kn = KnowledgeNeurons(model, tokenizer, model_type="gpt2", device="cpu")
    return model, tokenizer, kn


def per_layer_relative(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """max_i |a_li − b_li| / max_i |b_li| for every layer l."""
    return [float((a[l] - b[l]).abs().max() / b[l].abs().max()) for l in range(b.shape[0])]


def eleuther_scores(kn, prompt, answer=" " + ANSWER):
    return kn.get_scores(prompt, answer, batch_size=BATCH, steps=STEPS, pbar=False).detach().double()


def test_the_real_package_is_the_one_from_the_registry():
    from importlib.metadata import version

    assert version("knowledge-neurons") == "0.0.2"


def test_get_scores_equals_knrecall_pre_activation_linspace_for_every_layer(setup):
    model, tokenizer, kn = setup
    adapter = adapter_for(model, "pre_activation")
    options = dict(steps=STEPS, rule="linspace", target="prob")
    pairs = [teacher_forced_contexts(tokenizer, prompt, ANSWER) for prompt in PARAPHRASES]
    batched = attribute_prompts(model, adapter, pairs, **options)
    worst = 0.0
    for k, (prompt, (prompt_ids, answer_ids), together) in enumerate(zip(PARAPHRASES, pairs, batched)):
        # knrecall's answer tokens are EleutherAI's: tokenizer(prompt) and tokenizer.encode(" Paris")
        assert prompt_ids == tokenizer(prompt).input_ids and answer_ids == tokenizer.encode(" " + ANSWER)
        assert len(answer_ids) == 1
        theirs = eleuther_scores(kn, prompt)
        assert theirs.shape == (3, 4 * 32)
        engines = [together, attribute_prompt(model, adapter, prompt_ids, answer_ids, **options)]
        if k == 0:  # the naive reference is slow: one prompt
            engines.append(attribute_prompt_naive(model, adapter, prompt_ids, answer_ids, **options))
        for ours in engines:
            differences = per_layer_relative(ours.attributions.double(), theirs)
            assert max(differences) < TOLERANCE, (prompt, differences)
            worst = max(worst, *differences)
    assert worst > 0  # computed independently, not by the same code
    # the default definition is another neuron: its map is far from EleutherAI's
    default = attribute_prompt(model, adapter_for(model), *pairs[0], **options)
    assert max(per_layer_relative(default.attributions.double(), eleuther_scores(kn, PARAPHRASES[0]))) > 0.01


def _workflow_selection(model, tokenizer, t: float, p: float):
    """knrecall's own path: `attribute_shard` (the batched engine, maps stored above 0.1 × the prompt's maximum)
    and `select_kns`, for one fact whose paraphrases are PARAPHRASES (template "{question}")."""
    item = Item("c1", "test", "two-hop?", PARAPHRASES, ANSWER, PARAPHRASES, ANSWER)  # one fact
    settings = AttributionSettings(STEPS, "linspace", "prob", store_threshold=0.1, full_maps=False,
                                   neuron="pre_activation")
    neurons, layers = attribute_shard([item], model, tokenizer, {"direct": "{question}"}, settings, 0, 1, 256)
    layers = pl.from_arrow(layers)
    prompts = layers.group_by("fact_id", "paraphrase").agg(pl.col("max_attribution").max())
    kns, info = select_kns(pl.from_arrow(neurons), prompts, Selection(t, p, False, (2.0, 5.0)), 0.1,
                           "pre_activation")
    assert info["neuron"] == "pre_activation"
    coarse = [sorted((r["layer"], r["neuron"]) for r in
                     kns.filter((pl.col("level") == "coarse") & (pl.col("paraphrase") == k)).iter_rows(named=True))
              for k in range(len(PARAPHRASES))]
    refined = sorted((r["layer"], r["neuron"]) for r in kns.filter(pl.col("level") == "refined").iter_rows(named=True))
    return coarse, refined


def test_coarse_and_refined_neurons_are_eleuthers(setup):
    model, tokenizer, kn = setup
    n, t = len(PARAPHRASES), 0.2  # knrecall's default coarse threshold
    coarse_theirs, scores = [], []
    for prompt in PARAPHRASES:
        coarse_theirs.append(sorted(map(tuple, kn.get_coarse_neurons(
            prompt, " " + ANSWER, batch_size=BATCH, steps=STEPS, adaptive_threshold=t, pbar=False))))
        scores.append(attribute_prompt(model, adapter_for(model, "pre_activation"),
                                       *teacher_forced_contexts(tokenizer, prompt, ANSWER), steps=STEPS,
                                       rule="linspace").attributions)
    # no score lies so close to the threshold that float rounding (~1e-6 relative) could move it across
    assert min(float(((m - t * m.max()).abs() / m.max()).min()) for m in scores) > 1e-5
    sizes = []
    for p_theirs in (0.25, 0.5):
        refined_theirs = sorted(map(tuple, kn.get_refined_neurons(
            PARAPHRASES, " " + ANSWER, p=p_theirs, batch_size=BATCH, steps=STEPS, coarse_adaptive_threshold=t,
            quiet=True)))
        p_ours = (math.floor(n * p_theirs) + 1) / n  # "count > n·p" is "share ≥ (floor(n·p) + 1) / n"
        coarse_ours, refined_ours = _workflow_selection(model, tokenizer, t, p_ours)
        assert coarse_ours == coarse_theirs
        assert refined_ours == refined_theirs and refined_ours
        sizes.append(len(refined_ours))
        # taking EleutherAI's p as knrecall's refine_fraction would keep the neurons shared by exactly n·p prompts
        _, loose = _workflow_selection(model, tokenizer, t, p_theirs)
        assert len(loose) > len(refined_theirs)
    assert sizes[0] > sizes[1]
    assert all(coarse_theirs)


@pytest.mark.parametrize("mode, factor", [("suppress", 0.0), ("enhance", 2.0)])
def test_modify_activations_equals_knrecall_interventions(setup, mode, factor):
    model, tokenizer, kn = setup
    chosen = [[0, 5], [1, 17], [2, 3], [2, 100]]
    results, _ = kn.modify_activations(PARAPHRASES[0], " " + ANSWER, chosen, mode=mode, quiet=True)
    prompt_ids, (gold,) = teacher_forced_contexts(tokenizer, PARAPHRASES[0], ANSWER)
    neurons: dict[int, list[int]] = {}
    for layer, index in chosen:
        neurons.setdefault(layer, []).append(index)
    ours = greedy_generate(model, [prompt_ids], 1, [], neurons=[neurons], factor=factor, policy="last_prompt",
                           gold_ids=[gold], adapter=adapter_for(model, "pre_activation"))[0]
    before = greedy_generate(model, [prompt_ids], 1, [], gold_ids=[gold])[0]
    assert before.gold_probs[0] == pytest.approx(results["before"]["gt_prob"], rel=1e-5)
    assert ours.gold_probs[0] == pytest.approx(results["after"]["gt_prob"], rel=1e-5)
    assert abs(results["after"]["gt_prob"] - results["before"]["gt_prob"]) > 1e-3 * results["before"]["gt_prob"]


def _greedy_two_tokens(model, tokenizer):
    """A prompt whose greedy 2-token continuation survives EleutherAI's decode-and-retokenize step unchanged."""
    words = " ".join(TEXT).split()
    for start in range(len(words) - 6):
        for length in (4, 5, 6):
            prompt = " ".join(words[start:start + length])
            ids = tokenizer(prompt).input_ids
            with torch.no_grad():
                first = int(model(torch.tensor([ids])).logits[0, -1].argmax())
                second = int(model(torch.tensor([ids + [first]])).logits[0, -1].argmax())
            text = tokenizer.decode([first, second])
            if (first != second and text.startswith(" ") and tokenizer(prompt + tokenizer.decode([first])).input_ids
                    == ids + [first] and teacher_forced_contexts(tokenizer, prompt, text) == (ids, [first, second])):
                return prompt, text, ids, [first, second]
    raise AssertionError("no prompt with a retokenization-stable greedy continuation")


def test_multi_token_answers(setup):
    model, tokenizer, _ = setup
    adapter = adapter_for(model, "pre_activation")
    options = dict(steps=STEPS, rule="linspace", target="prob")
    prompt, answer, ids, golds = _greedy_two_tokens(model, tokenizer)
    # model_type="gpt2" attributes one target token only; the error leaves its `Patch` module in the model (no
    # try/finally), so it runs on a copy
    copied = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        KnowledgeNeurons(copied, tokenizer, model_type="gpt2", device="cpu").get_scores(
            prompt, answer, batch_size=BATCH, steps=STEPS, pbar=False)
    assert type(copied.transformer.h[0].mlp.c_fc).__name__ == "Patch"
    # model_type="gpt" continues with the argmax tokens: knrecall's teacher-forced mean when they are the gold ones
    gpt = KnowledgeNeurons(model, tokenizer, model_type="gpt", device="cpu")
    theirs = gpt.get_scores(prompt, answer, batch_size=BATCH, steps=STEPS, pbar=False).detach().double()
    ours = attribute_prompt(model, adapter, ids, golds, **options)
    assert ours.n_answer_tokens == 2
    assert max(per_layer_relative(ours.attributions.double(), theirs)) < TOLERANCE
    # ... and not when the gold answer's first token is not the argmax: EleutherAI then attributes the second gold
    # token after the argmax token, knrecall after the first gold token (teacher forcing)
    other = next(t for t in range(1, len(tokenizer)) if t not in golds and tokenizer.decode([t]).startswith(" ")
                 and tokenizer.encode(tokenizer.decode([t, golds[1]])) == [t, golds[1]])
    other_answer = tokenizer.decode([other, golds[1]])
    theirs = gpt.get_scores(prompt, other_answer, batch_size=BATCH, steps=STEPS, pbar=False).detach().double()
    ours = attribute_prompt(model, adapter, ids, [other, golds[1]], **options)
    assert max(per_layer_relative(ours.attributions.double(), theirs)) > 1e-2
    first_token_only = attribute_prompt(model, adapter, ids, [other], **options).attributions.double()
    assert max(per_layer_relative((ours.attributions.double() * 2 - first_token_only), theirs * 2 - first_token_only)) \
        > 1e-2  # the second token's map is the one that differs
