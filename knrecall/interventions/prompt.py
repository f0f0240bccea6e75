"""Scale neurons on one prompt and watch the answer: greedy generation without and with the scaling
(`intervene`), on a model in memory (`knrecall.load`), as the workflow's `intervene` rule generates (cached greedy
decoding with the neurons scaled at the positions of a policy, `knrecall.interventions.generate`).

The gold answer's probability is that of its first token at the step that generates the answer: the first
generated token, or with chain of thought (`cot`) the step after "So the answer is" in the generation
(`knrecall.interventions.run.answer_step`). Defaults equal `params.yaml`'s (`interventions.suppress_factor`,
`interventions.position_policy`, `answer.max_new_tokens`); `factor=2.0` is the workflow's enhancement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from knrecall.answer.generate import stop_token_ids
from knrecall.attribution.kns import FactKNs
from knrecall.data.correctness import extract_span
from knrecall.errors import KnrecallError
from knrecall.interventions.controls import as_layer_map
from knrecall.interventions.generate import greedy_generate
from knrecall.interventions.run import COT_ANSWER_CONTEXT, answer_step
from knrecall.models.adapters import adapter_for
from knrecall.recall.steps import prompt_input_ids
from knrecall.targets import answer_token_ids


@dataclass(frozen=True)
class PromptAnswer:
    """One greedy answer: the generation, its answer span, P(gold first token) at the answer step, the token ids."""

    generation: str
    answer: str
    gold_prob: float
    generated_ids: list[int]


@dataclass(frozen=True)
class PromptIntervention:
    """The answer without (`before`) and with (`after`) the neurons scaled by `factor` at `policy`'s positions."""

    before: PromptAnswer
    after: PromptAnswer
    factor: float
    policy: str
    n_neurons: int


def neuron_map(neurons) -> dict[int, list[int]]:
    """{layer: [neuron, ...]} of a `FactKNs`, of (layer, neuron) pairs, or of such a mapping (kept as given)."""
    if isinstance(neurons, FactKNs):
        return as_layer_map(neurons.neurons)
    if isinstance(neurons, Mapping):
        return {int(layer): [int(i) for i in indices] for layer, indices in neurons.items()}
    if isinstance(neurons, Iterable) and not isinstance(neurons, str):
        pairs = list(neurons)
        if all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            return as_layer_map((int(layer), int(i)) for layer, i in pairs)
    raise KnrecallError("interventions: neurons must be a FactKNs, (layer, neuron) pairs or {layer: [neuron, ...]}")


def intervene(model, tokenizer, prompt: str, gold: str, neurons, *, factor: float = 0.0,
              policy: str = "last_prompt", cot: bool = False, max_new_tokens: int = 8,
              neuron: str | None = None) -> PromptIntervention:
    """Greedy answers to `prompt` without and with `neurons` (a `FactKNs`, (layer, neuron) pairs or
    {layer: [neuron, ...]}) multiplied by `factor` (0: suppress, 2: enhance) at the positions of `policy`
    (last_prompt | all_generated | all). `neuron`: the neuron definition (default: the KNs', else ffn_input)."""
    if neuron is None:
        neuron = neurons.neuron if isinstance(neurons, FactKNs) else "ffn_input"
    layers = neuron_map(neurons)
    prompt_ids = prompt_input_ids(tokenizer, prompt)
    gold_id = answer_token_ids(tokenizer, COT_ANSWER_CONTEXT if cot else prompt, gold)[0]
    stops = stop_token_ids(tokenizer, cot)
    adapter = adapter_for(model, neuron)
    answers = []
    for scale in (1.0, factor):
        result = greedy_generate(model, [prompt_ids], max_new_tokens, stops, neurons=[layers], factor=scale,
                                 policy=policy, gold_ids=[gold_id], adapter=adapter,
                                 pad_id=tokenizer.pad_token_id)[0]
        generation = tokenizer.decode(result.generated_ids, skip_special_tokens=True)
        span = extract_span(generation, cot)
        prob = result.gold_probs[answer_step(tokenizer, result.generated_ids, generation, span, cot)]
        answers.append(PromptAnswer(generation, span, prob, result.generated_ids))
    return PromptIntervention(answers[0], answers[1], float(factor), policy, sum(map(len, layers.values())))
