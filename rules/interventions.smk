# Interventions: scale each item's KNs (and layer-matched random neurons) during generation, sharded by item.


rule intervene:
    input:
        item_table=f"{RESULTS}/items.parquet",
        kns=f"{RESULTS}/kns/{{model}}.parquet",
        model=model_inputs,
    output:
        f"{RESULTS}/interventions/{{model}}/shard-{{shard}}.parquet",
    log:
        f"{LOGS}/intervene_{{model}}_{{shard}}.log",
    conda:
        "../envs/knrecall.yaml"
    threads: 1
    resources:
        gpu=1,
        batch_size=64,
        device="cpu",
    params:
        spec=lambda wc: as_json(
            {
                "interventions": PARAMS.interventions.model_dump(mode="json", exclude={"causal_random_seeds"}),
                "attribution": {"neuron": PARAMS.attribution.neuron},
                "answer": PARAMS.answer.model_dump(mode="json"),
                "prompts": PARAMS.prompts,
                "model": model_block(wc.model),
                "seed": PARAMS.seed,
            }
        ),
        model_path=model_path,
        shard=lambda wc: int(wc.shard),
        impl=IMPLEMENTATION["interventions"],
    shell:
        "python -m knrecall intervene --items {input.item_table} --kns {input.kns} --params {params.spec:q}"
        " --model-path {params.model_path:q} --model-name {wildcards.model} --shard {params.shard}"
        " --batch-size {resources.batch_size} --device {resources.device} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule intervention_summary:
    input:
        item_table=f"{RESULTS}/items.parquet",
        shards=lambda wc: intervention_shard_files(wc.model),
    output:
        f"{RESULTS}/interventions/{{model}}/summary.json",
    log:
        f"{LOGS}/intervention_summary_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        spec=lambda wc: as_json(
            {
                "recall": {"bootstrap_resamples": PARAMS.recall.bootstrap_resamples},
                "seed": PARAMS.seed,
            }
        ),
        impl=IMPLEMENTATION["interventions"],
    shell:
        "python -m knrecall intervention-summary --items {input.item_table} --shards {input.shards}"
        " --params {params.spec:q} --model-name {wildcards.model} --out {output} > {log} 2>&1"


rule intervention_metrics:
    input:
        expand(f"{RESULTS}/interventions/{{model}}/summary.json", model=MODELS),
    output:
        f"{RESULTS}/metrics/interventions.json",
    log:
        f"{LOGS}/intervention_metrics.log",
    conda:
        "../envs/knrecall.yaml"
    shell:
        "python -m knrecall merge-metrics {input} --out {output} > {log} 2>&1"


rule causal_effects:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        kns=f"{RESULTS}/kns/{{model}}.parquet",
        model=model_inputs,
    output:
        f"{RESULTS}/interventions/{{model}}/causal.parquet",
    log:
        f"{LOGS}/causal_effects_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    resources:
        gpu=1,
        batch_size=256,
        device="cpu",
    params:
        spec=lambda wc: as_json(
            {
                "interventions": {
                    "suppress_factor": PARAMS.interventions.suppress_factor,
                    "causal_random_seeds": PARAMS.interventions.causal_random_seeds,
                },
                "attribution": {"neuron": PARAMS.attribution.neuron},
                "model": model_block(wc.model),
                "seed": PARAMS.seed,
            }
        ),
        model_path=model_path,
        impl=IMPLEMENTATION["causal"],
    shell:
        "python -m knrecall causal --items {input.item_table} --predictions {input.predictions}"
        " --kns {input.kns} --params {params.spec:q} --model-path {params.model_path:q}"
        " --model-name {wildcards.model} --batch-size {resources.batch_size} --device {resources.device}"
        " --threads {threads} --out {output} > {log} 2>&1"
