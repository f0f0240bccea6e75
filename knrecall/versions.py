"""Implementation versions, one per phase. Each rule passes its phase's version in `params:`, so bumping one here
(when a code change alters that phase's results) makes Snakemake rerun exactly that phase and what follows."""

IMPLEMENTATION = {
    "world": 3,
    "train": 2,
    "items": 1,
    "answer": 2,
    "metrics": 2,
    "attribution": 1,
    "kns": 1,
    "measure": 1,
    "recall": 1,
    "interventions": 2,
    "report": 1,
}
