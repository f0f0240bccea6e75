# The items table: from the embedded world's TFRKN-shaped items, or from a dataset file.


rule import_items:
    input:
        items_source(),
    output:
        f"{RESULTS}/items.parquet",
    log:
        f"{LOGS}/import_items.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        format="tfrkn" if PARAMS.dataset.source == "world" else PARAMS.dataset.source,
        impl=IMPLEMENTATION["items"],
    shell:
        "python -m knrecall data import --format {params.format} --input {input:q} --out {output} > {log} 2>&1"
