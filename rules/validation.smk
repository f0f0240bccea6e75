# Validating the measurement: the scoreboard of every KN score variant x position (specificity, causal agreement,
# ground truth), from the recall phase's scores and the per-item causal effects; and the subject-site variant (hop-1
# KNs attributed at the subject's last token of the single-hop prompts), scored on a sample of the items.


rule subject_site:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        steps=f"{RESULTS}/recall/{{model}}/steps.parquet",
        model=model_inputs,
    output:
        summary=f"{RESULTS}/recall/{{model}}/subject_site.json",
        kns=f"{RESULTS}/kns/{{model}}.subject.parquet",
        scores=f"{RESULTS}/recall/{{model}}/subject_scores.parquet",
        null_scores=f"{RESULTS}/recall/{{model}}/subject_null_scores.parquet",
        causal=f"{RESULTS}/interventions/{{model}}/subject_causal.parquet",
    log:
        f"{LOGS}/subject_site_{{model}}.log",
    priority: 10
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    resources:
        gpu=1,
        max_rows=256,
        batch_size=64,
        device="cpu",
    params:
        spec=lambda wc: as_json(
            {
                "attribution": PARAMS.attribution.model_dump(mode="json"),
                "kns": PARAMS.kns.model_dump(mode="json"),
                "recall": {"null_per_fact": PARAMS.recall.null_per_fact},
                "interventions": {
                    "suppress_factor": PARAMS.interventions.suppress_factor,
                    "causal_random_seeds": PARAMS.interventions.causal_random_seeds,
                },
                "validation": {"subject_site_items": PARAMS.validation.subject_site_items},
                "prompts": PARAMS.prompts,
                "model": model_block(wc.model),
                "seed": PARAMS.seed,
            }
        ),
        model_path=model_path,
        impl=IMPLEMENTATION["subject_site"],
    shell:
        "python -m knrecall subject-site --items {input.item_table} --predictions {input.predictions}"
        " --steps {input.steps} --params {params.spec:q} --model-path {params.model_path:q}"
        " --model-name {wildcards.model} --max-rows {resources.max_rows} --batch-size {resources.batch_size}"
        " --device {resources.device} --threads {threads} --out {output.summary} --kns-out {output.kns}"
        " --scores-out {output.scores} --null-scores-out {output.null_scores} --causal-out {output.causal}"
        " > {log} 2>&1"


rule scoreboard:
    input:
        item_table=f"{RESULTS}/items.parquet",
        predictions=f"{RESULTS}/predictions/{{model}}.parquet",
        scores=f"{RESULTS}/recall/{{model}}/scores.parquet",
        null_scores=f"{RESULTS}/recall/{{model}}/null_scores.parquet",
        causal=f"{RESULTS}/interventions/{{model}}/causal.parquet",
        subject_site=f"{RESULTS}/recall/{{model}}/subject_site.json",
        subject_scores=f"{RESULTS}/recall/{{model}}/subject_scores.parquet",
        subject_null_scores=f"{RESULTS}/recall/{{model}}/subject_null_scores.parquet",
        subject_causal=f"{RESULTS}/interventions/{{model}}/subject_causal.parquet",
    output:
        f"{RESULTS}/recall/{{model}}/scoreboard.json",
    log:
        f"{LOGS}/scoreboard_{{model}}.log",
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    params:
        spec=lambda wc: as_json({"recall": PARAMS.recall.model_dump(mode="json"), "seed": PARAMS.seed}),
        impl=IMPLEMENTATION["scoreboard"],
    shell:
        "python -m knrecall scoreboard --items {input.item_table} --predictions {input.predictions}"
        " --scores {input.scores} --null-scores {input.null_scores} --causal {input.causal}"
        " --subject-site {input.subject_site} {input.subject_scores} {input.subject_null_scores}"
        " {input.subject_causal} --params {params.spec:q} --model-name {wildcards.model} --threads {threads}"
        " --out {output} > {log} 2>&1"
