"""Knowledge-neuron selection (DESIGN.md §4).

Coarse KNs of one prompt: neurons whose attribution exceeds t × the prompt's maximum attribution (positive only).
Refined KNs of one fact: coarse KNs shared by at least a fraction p of the fact's paraphrase prompts. In adaptive
mode p moves in steps of 0.05 until the mean refined-KN count per fact lies in [low, high] (as Dai et al.).

`select_kns` works on the attribution shards' tables (the `select-kns` rule); `select_fact_kns` is the same selection
for one fact's attribution maps in memory (`knrecall.attribute_paraphrases`), for notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from knrecall.errors import KnrecallError

FACT = "fact"  # the fact_id of `select_fact_kns`'s one fact


@dataclass(frozen=True)
class Selection:
    coarse_threshold: float  # t
    refine_fraction: float  # p (the starting point in adaptive mode)
    adaptive: bool
    band: tuple[float, float]  # target mean KN count per fact, adaptive mode


def coarse_kns(neurons: pl.DataFrame, prompt_max: pl.DataFrame, t: float) -> pl.DataFrame:
    """`neurons`: fact_id, paraphrase, layer, neuron, attribution; `prompt_max`: fact_id, paraphrase, max_attribution."""
    return (
        neurons.join(prompt_max, on=["fact_id", "paraphrase"])
        .filter((pl.col("attribution") > 0) & (pl.col("max_attribution") > 0))
        .filter(pl.col("attribution") > t * pl.col("max_attribution"))
        .drop("max_attribution")
    )


def refine(coarse: pl.DataFrame, prompts_per_fact: pl.DataFrame, p: float) -> pl.DataFrame:
    """Neurons coarse in at least a fraction p of the fact's prompts; `prompts_per_fact`: fact_id, n_prompts."""
    return (
        coarse.group_by("fact_id", "layer", "neuron")
        .agg(pl.len().alias("n_shared"), pl.col("attribution").mean().alias("attribution"))
        .join(prompts_per_fact, on="fact_id")
        .with_columns((pl.col("n_shared") / pl.col("n_prompts")).cast(pl.Float32).alias("share"))
        .filter(pl.col("share") >= p - 1e-9)
        .drop("n_shared", "n_prompts")
    )


def mean_count(refined: pl.DataFrame, n_facts: int) -> float:
    return refined.height / n_facts if n_facts else 0.0


def choose_p(coarse: pl.DataFrame, prompts_per_fact: pl.DataFrame, selection: Selection) -> tuple[float, bool]:
    """The fraction p to use, and whether the adaptive search reached the band."""
    p = selection.refine_fraction
    if not selection.adaptive:
        return p, True
    low, high = selection.band
    n_facts = prompts_per_fact.height
    tried: list[tuple[float, float]] = []
    for _ in range(40):
        count = mean_count(refine(coarse, prompts_per_fact, p), n_facts)
        tried.append((p, count))
        if low <= count <= high:
            return p, True
        step = 0.05 if count > high else -0.05
        nxt = round(min(1.0, max(0.05, p + step)), 2)
        if nxt == p or any(abs(nxt - q) < 1e-9 for q, _ in tried):
            break
        p = nxt
    best = min(tried, key=lambda pc: min(abs(pc[1] - low), abs(pc[1] - high)))
    return best[0], False


def select_kns(neurons: pl.DataFrame, prompts: pl.DataFrame, selection: Selection, store_threshold: float,
               neuron: str = "ffn_input"):
    """(kns table, info). `prompts`: one row per attributed prompt (fact_id, paraphrase, max_attribution);
    `neuron`: the neuron definition the attributions were made under (`attribution.neuron`), recorded in `info`
    (and so in the KN file's metadata, which the phases that read neurons check)."""
    if selection.coarse_threshold < store_threshold:
        raise KnrecallError(
            f"coarse threshold t={selection.coarse_threshold} is below the storage threshold {store_threshold} "
            "of the attribution shards: attribute again with full maps or a lower storage threshold"
        )
    coarse = coarse_kns(neurons, prompts.select("fact_id", "paraphrase", "max_attribution"), selection.coarse_threshold)
    prompts_per_fact = prompts.group_by("fact_id").agg(pl.len().alias("n_prompts"))
    p, reached = choose_p(coarse, prompts_per_fact, selection)
    refined = refine(coarse, prompts_per_fact, p)
    table = pl.concat(
        [
            coarse.select(
                "fact_id", pl.lit("coarse").alias("level"), pl.col("paraphrase").cast(pl.Int16),
                pl.col("layer").cast(pl.Int16), pl.col("neuron").cast(pl.Int32),
                pl.col("attribution").cast(pl.Float32), pl.lit(None, dtype=pl.Float32).alias("share"),
            ),
            refined.select(
                "fact_id", pl.lit("refined").alias("level"), pl.lit(None, dtype=pl.Int16).alias("paraphrase"),
                pl.col("layer").cast(pl.Int16), pl.col("neuron").cast(pl.Int32),
                pl.col("attribution").cast(pl.Float32), pl.col("share"),
            ),
        ]
    ).sort("fact_id", "level", "paraphrase", "layer", "neuron", nulls_last=True)
    info = {
        "neuron": neuron,
        "coarse_threshold": selection.coarse_threshold,
        "refine_fraction": p,
        "refine_mode": "adaptive" if selection.adaptive else "fixed",
        "adaptive_band": list(selection.band) if selection.adaptive else None,
        "adaptive_band_reached": reached if selection.adaptive else None,
        "store_threshold": store_threshold,
        "n_facts": prompts_per_fact.height,
        "mean_refined_kns_per_fact": mean_count(refined, prompts_per_fact.height),
    }
    return table, info


def refined_sets(kns: pl.DataFrame) -> dict[str, list[tuple[int, int]]]:
    refined = kns.filter(pl.col("level") == "refined").sort("fact_id", "layer", "neuron")
    sets: dict[str, list[tuple[int, int]]] = {}
    for row in refined.iter_rows(named=True):
        sets.setdefault(row["fact_id"], []).append((row["layer"], row["neuron"]))
    return sets


@dataclass(frozen=True)
class FactKNs:
    """The knowledge neurons of one fact, selected from its paraphrases' attribution maps (`select_fact_kns`).

    `refined`: layer, neuron, attribution (mean over the prompts where it is coarse), share (of the prompts where it
    is coarse), baseline (b_i: its mean activation at the answer-predicting position over the paraphrases).
    `coarse`: paraphrase, layer, neuron, attribution. `info`: the thresholds used (as the KN file's metadata).
    """

    refined: pl.DataFrame
    coarse: pl.DataFrame
    info: dict
    neuron: str = "ffn_input"  # the neuron definition the maps were computed under

    @property
    def neurons(self) -> list[tuple[int, int]]:
        """The refined KNs as (layer, neuron) pairs, sorted."""
        return list(self.refined.select("layer", "neuron").iter_rows())

    def __len__(self) -> int:
        return self.refined.height


def select_fact_kns(maps: Sequence, *, coarse_threshold: float = 0.2, refine_fraction: float = 0.5,
                    refine_mode: str = "fixed", adaptive_band: tuple[float, float] = (2.0, 5.0)) -> FactKNs:
    """Coarse KNs of each map and the refined KNs of the fact (`select_kns` on full maps); `maps` are the
    `LayerwiseIG`s of one fact's paraphrase prompts, all of the same neuron definition. Defaults equal
    `params.yaml`'s `kns` block."""
    import torch

    if not maps:
        raise KnrecallError("KN selection: no attribution maps given (attribute the fact's paraphrases first)")
    if refine_mode not in ("fixed", "adaptive"):
        raise KnrecallError(f"KN selection: refine_mode must be fixed or adaptive, got {refine_mode!r}")
    definitions = {ig.neuron for ig in maps}
    if len(definitions) > 1:
        raise KnrecallError(f"KN selection: the maps mix neuron definitions ({', '.join(sorted(definitions))})")
    rows: dict[str, list] = {"paraphrase": [], "layer": [], "neuron": [], "attribution": []}
    for paraphrase, ig in enumerate(maps):
        layers, neurons = torch.nonzero(ig.attributions > 0, as_tuple=True)
        rows["paraphrase"] += [paraphrase] * len(layers)
        rows["layer"] += layers.tolist()
        rows["neuron"] += neurons.tolist()
        rows["attribution"] += ig.attributions[layers, neurons].tolist()
    neurons = pl.DataFrame(rows, schema={"paraphrase": pl.Int64, "layer": pl.Int64, "neuron": pl.Int64,
                                         "attribution": pl.Float64}).with_columns(fact_id=pl.lit(FACT))
    prompts = pl.DataFrame({"fact_id": [FACT] * len(maps), "paraphrase": list(range(len(maps))),
                            "max_attribution": [float(ig.attributions.max()) for ig in maps]})
    selection = Selection(coarse_threshold, refine_fraction, refine_mode == "adaptive", tuple(adaptive_band))
    table, info = select_kns(neurons, prompts, selection, 0.0, definitions.pop())
    mean_activation = torch.stack([ig.activations for ig in maps]).mean(dim=0)
    refined = table.filter(pl.col("level") == "refined").select("layer", "neuron", "attribution", "share")
    baselines = [float(mean_activation[layer, neuron]) for layer, neuron in refined.select("layer", "neuron").iter_rows()]
    refined = refined.with_columns(baseline=pl.Series(baselines, dtype=pl.Float32))
    coarse = table.filter(pl.col("level") == "coarse").select("paraphrase", "layer", "neuron", "attribution")
    return FactKNs(refined, coarse, info, info["neuron"])
