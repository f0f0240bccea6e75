# The recall analysis: KN activations at the reasoning steps, then KN scores, recall decisions and categories.


rule measure:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        kns=f"{RESULTS}/kns/{{model}}.parquet",
        model=model_inputs,
    output:
        activations=f"{RESULTS}/recall/{{model}}/activations.parquet",
        baselines=f"{RESULTS}/recall/{{model}}/baselines.parquet",
        steps=f"{RESULTS}/recall/{{model}}/steps.parquet",
        profile=f"{RESULTS}/recall/{{model}}/profile.parquet",
    log:
        f"{LOGS}/measure_{{model}}.log",
    # measure -> subject_site -> scoreboard is the longest chain after the KNs: start it first
    priority: 10
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    resources:
        batch_size=64,
        device="cpu",
    params:
        spec=lambda wc: as_json(
            {
                "recall": {
                    "null_per_fact": PARAMS.recall.null_per_fact,
                    "profile_items": PARAMS.recall.profile_items,
                },
                "attribution": {"neuron": PARAMS.attribution.neuron},
                "prompts": PARAMS.prompts,
                "model": model_block(wc.model),
                "seed": PARAMS.seed,
            }
        ),
        model_path=model_path,
        impl=IMPLEMENTATION["measure"],
    shell:
        "python -m knrecall measure --items {input.item_table} --predictions {input.predictions}"
        " --kns {input.kns} --params {params.spec:q} --model-path {params.model_path:q}"
        " --model-name {wildcards.model} --batch-size {resources.batch_size} --device {resources.device}"
        " --threads {threads} --baselines {output.baselines} --steps {output.steps}"
        " --profile {output.profile} --out {output.activations} > {log} 2>&1"


rule recall:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        kns=f"{RESULTS}/kns/{{model}}.parquet",
        baselines=rules.measure.output.baselines,
        activations=rules.measure.output.activations,
    output:
        table=f"{RESULTS}/recall/{{model}}/recall.parquet",
        scores=f"{RESULTS}/recall/{{model}}/scores.parquet",
        null_scores=f"{RESULTS}/recall/{{model}}/null_scores.parquet",
        summary=f"{RESULTS}/recall/{{model}}/summary.json",
    log:
        f"{LOGS}/recall_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        spec=lambda wc: as_json({"recall": PARAMS.recall.model_dump(mode="json"), "seed": PARAMS.seed}),
        impl=IMPLEMENTATION["recall"],
    shell:
        "python -m knrecall recall --items {input.item_table} --predictions {input.predictions}"
        " --kns {input.kns} --baselines {input.baselines} --activations {input.activations}"
        " --params {params.spec:q} --model-name {wildcards.model} --out {output.table}"
        " --scores {output.scores} --null-scores {output.null_scores}"
        " --summary {output.summary} > {log} 2>&1"


rule recall_metrics:
    input:
        expand(f"{RESULTS}/recall/{{model}}/summary.json", model=MODELS),
        expand(f"{RESULTS}/recall/{{model}}/scoreboard.json", model=MODELS),
    output:
        f"{RESULTS}/metrics/recall.json",
    log:
        f"{LOGS}/recall_metrics.log",
    conda:
        "../envs/knrecall.yaml"
    shell:
        "python -m knrecall merge-metrics {input} --out {output} > {log} 2>&1"
