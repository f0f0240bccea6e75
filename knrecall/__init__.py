"""knrecall: do language models recall the facts behind a two-hop question while they answer it?

The Python API (the workflow's verbs for one model in memory; README "Python API"):

    model, tokenizer = knrecall.load(path)                                   # hub id or local checkpoint
    ig = knrecall.attribute(model, tokenizer, prompt, answer)                # per-layer IG of one prompt
    maps = knrecall.attribute_paraphrases(model, tokenizer, prompts, answer) # one fact's paraphrases
    kns = knrecall.select_kns(maps)                                          # coarse and refined KNs
    score = knrecall.recall_score(model, tokenizer, kns, two_hop_prompt)     # Δ of that hop on a prompt
    result = knrecall.intervene(model, tokenizer, two_hop_prompt, gold, kns, factor=0.0)  # suppress / enhance

Each name is imported on first use, so `import knrecall` loads no torch.
"""

__version__ = "0.1.0"

from knrecall.lazy import lazy_exports  # noqa: E402

_EXPORTS = {
    "load": "knrecall.models.load",
    "attribute": "knrecall.attribution.prompt",
    "attribute_paraphrases": "knrecall.attribution.prompt",
    "LayerwiseIG": "knrecall.attribution.engine",
    "select_kns": "knrecall.attribution.kns:select_fact_kns",
    "FactKNs": "knrecall.attribution.kns",
    "recall_score": "knrecall.recall.prompt",
    "HopRecall": "knrecall.recall.prompt",
    "intervene": "knrecall.interventions.prompt",
    "PromptIntervention": "knrecall.interventions.prompt",
    "PromptAnswer": "knrecall.interventions.prompt",
    "KnrecallError": "knrecall.errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
