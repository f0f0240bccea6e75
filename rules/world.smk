# The embedded synthetic world: generate the graph and corpus, train the world model, score it.


rule generate_world:
    output:
        world_items=f"{WORLD_DIR}/items.json",
        corpus=f"{WORLD_DIR}/corpus.jsonl",
        graph=f"{WORLD_DIR}/graph.json",
    log:
        f"{LOGS}/generate_world.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        world=lambda wc: as_json(PARAMS.world),
        seed=PARAMS.seed,
        templates=lambda wc: as_json(PARAMS.prompts),
        impl=IMPLEMENTATION["world"],
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m knrecall world generate --params {params.world:q} --seed {params.seed}"
        " --templates {params.templates:q} --out-dir {params.out_dir} > {log} 2>&1"


rule train_world_model:
    input:
        corpus=rules.generate_world.output.corpus,
        world_items=rules.generate_world.output.world_items,
    output:
        world_model_outputs(),
    log:
        f"{LOGS}/train_world_model.log",
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    params:
        world_model=lambda wc: as_json(PARAMS.world_model),
        templates=lambda wc: as_json(PARAMS.prompts),
        seed=PARAMS.seed,
        impl=IMPLEMENTATION["train"],
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m knrecall world train --corpus {input.corpus} --items {input.world_items}"
        " --params {params.world_model:q} --templates {params.templates:q} --seed {params.seed} --threads {threads}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule world_metrics:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=expand(f"{RESULTS}/predictions/{{model}}.parquet", model=WORLD_MODELS[:1]),
        training=f"{WORLD_MODEL_DIR}/training.json",
    output:
        f"{RESULTS}/metrics/world.json",
    log:
        f"{LOGS}/world_metrics.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        impl=IMPLEMENTATION["metrics"],
    shell:
        "python -m knrecall world metrics --items {input.item_table} --predictions {input.predictions}"
        " --training {input.training} --out {output} > {log} 2>&1"
