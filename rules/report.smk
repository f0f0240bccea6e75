# The report: one HTML page with every model's figures and tables, from the outputs above.


rule report:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=expand(f"{RESULTS}/predictions/{{model}}.parquet", model=MODELS),
        kns=expand(f"{RESULTS}/kns/{{model}}.parquet", model=MODELS),
        layers=[path for name in MODELS for path in shard_files(name, "layers.parquet")],
        recall=expand(f"{RESULTS}/recall/{{model}}/recall.parquet", model=MODELS),
        scores=expand(
            f"{RESULTS}/recall/{{model}}/{{table}}.parquet",
            model=MODELS,
            table=["scores", "null_scores", "profile"],
        ),
        metrics=metrics_files(),
    output:
        page=f"{RESULTS}/report/index.html",
        figures=[
            report(
                f"{RESULTS}/report/figures/{name}/{figure}.png",
                caption=f"../report/captions/{figure}.rst",
                category=name,
                subcategory=figure,
            )
            for name in MODELS
            for figure in FIGURES
        ],
        series=expand(
            f"{RESULTS}/report/data/{{series}}.csv",
            series=["accuracy", "recall_shares", "interventions"],
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        everything=lambda wc: as_json(PARAMS),
        dataset=dataset_description(),
        models=MODELS,
        results=lambda wc, input: os.path.dirname(input.item_table),
        out_dir=lambda wc, output: os.path.dirname(output.page),
        impl=IMPLEMENTATION["report"],
    shell:
        "python -m knrecall report --results {params.results} --models {params.models}"
        " --params {params.everything:q} --dataset {params.dataset:q} --out-dir {params.out_dir}"
        " > {log} 2>&1"
