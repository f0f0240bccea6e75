# Validating the measurement: the scoreboard of every KN score variant x position (specificity, causal agreement,
# ground truth), from the recall phase's scores and the per-item causal effects.


rule scoreboard:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        scores=f"{RESULTS}/recall/{{model}}/scores.parquet",
        null_scores=f"{RESULTS}/recall/{{model}}/null_scores.parquet",
        causal=f"{RESULTS}/interventions/{{model}}/causal.parquet",
    output:
        f"{RESULTS}/recall/{{model}}/scoreboard.json",
    log:
        f"{LOGS}/scoreboard_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        spec=lambda wc: as_json({"recall": PARAMS.recall.model_dump(mode="json"), "seed": PARAMS.seed}),
        impl=IMPLEMENTATION["scoreboard"],
    shell:
        "python -m knrecall scoreboard --items {input.item_table} --predictions {input.predictions}"
        " --scores {input.scores} --null-scores {input.null_scores} --causal {input.causal}"
        " --params {params.spec:q} --model-name {wildcards.model} --out {output} > {log} 2>&1"
