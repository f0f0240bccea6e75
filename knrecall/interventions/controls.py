"""Random-neuron controls for an intervention (DESIGN.md §4, "Interventions").

A control for a knowledge-neuron set S has, in every layer, exactly as many neurons as S has there, drawn uniformly
without replacement from that layer's neurons outside `exclude` (the item's knowledge neurons of both hops, so a
control never touches a KN). The draw is a pure function of its key (model, item, target, control seed): the same
key gives the same neurons, different seeds give independent draws.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from knrecall.errors import KnrecallError

Neuron = tuple[int, int]  # (layer, neuron index)


def random_control(kns: Iterable[Neuron], exclude: Iterable[Neuron], width: int, key: str) -> list[Neuron]:
    """Neurons with the same per-layer counts as `kns`, none in `exclude`, sorted; drawn with `random.Random(key)`."""
    counts = Counter(layer for layer, _ in kns)
    banned: dict[int, set[int]] = {}
    for layer, neuron in exclude:
        banned.setdefault(layer, set()).add(neuron)
    rng = random.Random(key)
    control: list[Neuron] = []
    for layer in sorted(counts):
        pool = [i for i in range(width) if i not in banned.get(layer, set())]
        if len(pool) < counts[layer]:
            raise KnrecallError(f"random control '{key}': layer {layer} has {len(pool)} neurons outside the "
                                f"knowledge neurons, {counts[layer]} needed")
        control += [(layer, i) for i in sorted(rng.sample(pool, counts[layer]))]
    return control


def as_layer_map(neurons: Iterable[Neuron]) -> dict[int, list[int]]:
    """{layer: [neuron, ...]} as `greedy_generate` takes it."""
    out: dict[int, list[int]] = {}
    for layer, neuron in neurons:
        out.setdefault(layer, []).append(neuron)
    return out
