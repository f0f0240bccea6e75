# Knowledge-neuron attribution: per-layer IG of every single-hop prompt (sharded), then KN selection.


rule attribute:
    input:
        item_table=f"{RESULTS}/items.parquet",
        model=model_inputs,
    output:
        neurons=f"{RESULTS}/attribution/{{model}}/shard-{{shard}}.parquet",
        layers=f"{RESULTS}/attribution/{{model}}/shard-{{shard}}.layers.parquet",
    log:
        f"{LOGS}/attribute_{{model}}_{{shard}}.log",
    conda:
        "../envs/knrecall.yaml"
    threads: 1
    resources:
        gpu=1,
        max_rows=256,
        device="cpu",
    params:
        spec=lambda wc: as_json(
            {
                "attribution": PARAMS.attribution.model_dump(mode="json"),
                "prompts": PARAMS.prompts,
                "model": model_block(wc.model),
            }
        ),
        model_path=model_path,
        shard=lambda wc: int(wc.shard),
        impl=IMPLEMENTATION["attribution"],
    shell:
        "python -m knrecall attribute --items {input.item_table} --params {params.spec:q}"
        " --model-path {params.model_path:q} --model-name {wildcards.model} --shard {params.shard}"
        " --max-rows {resources.max_rows} --device {resources.device} --threads {threads}"
        " --out {output.neurons} --layers-out {output.layers} > {log} 2>&1"


rule select_kns:
    input:
        neurons=lambda wc: shard_files(wc.model, "parquet"),
        layers=lambda wc: shard_files(wc.model, "layers.parquet"),
    output:
        kns=f"{RESULTS}/kns/{{model}}.parquet",
        summary=f"{RESULTS}/kns/{{model}}.summary.json",
    log:
        f"{LOGS}/select_kns_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        selection=lambda wc: as_json(
            {"attribution": PARAMS.attribution.model_dump(mode="json"), "kns": PARAMS.kns.model_dump(mode="json")}
        ),
        impl=IMPLEMENTATION["kns"],
    shell:
        "python -m knrecall select-kns --neurons {input.neurons} --layers {input.layers}"
        " --params {params.selection:q} --model-name {wildcards.model}"
        " --out {output.kns} --summary {output.summary} > {log} 2>&1"


rule attribution_metrics:
    input:
        expand(f"{RESULTS}/kns/{{model}}.summary.json", model=MODELS),
    output:
        f"{RESULTS}/metrics/attribution.json",
    log:
        f"{LOGS}/attribution_metrics.log",
    conda:
        "../envs/knrecall.yaml"
    shell:
        "python -m knrecall merge-metrics {input} --out {output} > {log} 2>&1"
