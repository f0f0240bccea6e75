# Greedy answers with correctness for every single-hop paraphrase and two-hop question, per model.


rule answer:
    input:
        item_table=f"{RESULTS}/items.parquet",
        model=model_inputs,
    output:
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        skipped=f"{RESULTS}/predictions/{{model}}.skipped.parquet",
    log:
        f"{LOGS}/answer_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    resources:
        batch_size=64,
        device="cpu",
    params:
        spec=lambda wc: as_json(
            {
                "answer": PARAMS.answer.model_dump(mode="json"),
                "prompts": PARAMS.prompts,
                "model": model_block(wc.model),
                "seed": PARAMS.seed,
            }
        ),
        model_path=model_path,
        impl=IMPLEMENTATION["answer"],
    shell:
        "python -m knrecall answer --items {input.item_table} --params {params.spec:q}"
        " --model-path {params.model_path:q} --model-name {wildcards.model}"
        " --batch-size {resources.batch_size} --device {resources.device} --threads {threads}"
        " --out {output.predictions} --skipped {output.skipped} > {log} 2>&1"
