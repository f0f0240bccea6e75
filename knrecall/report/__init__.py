"""The HTML report: figures, tables and the run manifest from the workflow outputs."""

# every model gets these figures (results/report/figures/<model>/<name>.png), in this order on the page
FIGURES = ("accuracy", "kn_layers", "kn_counts", "deltas", "categories", "conflict", "interventions", "scoreboard",
           "positions", "profile", "completeness")
