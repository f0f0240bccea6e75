"""Implementation versions, one per phase. Each rule passes its phase's version in `params:`, so bumping one here
(when a code change alters that phase's results) makes Snakemake rerun exactly that phase and what follows."""

IMPLEMENTATION = {
    "world": 4,
    "train": 2,
    "items": 1,
    "answer": 3,
    "metrics": 2,
    "attribution": 2,
    "kns": 1,
    "measure": 2,
    "recall": 2,
    "interventions": 2,
    "causal": 1,
    "scoreboard": 2,
    "subject_site": 2,
    "report": 1,
}
