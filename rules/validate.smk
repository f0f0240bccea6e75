# Replication across worlds (`snakemake validate_worlds`; not part of `rule all`): the world pipeline for
# validation.world_seeds seeds (seed, seed + 1, ...), each a nested run of this workflow in its own directory
# results/validate/seed-N/ (its own params.yaml, .snakemake and lock), then every scoreboard figure per seed and
# across seeds (knrecall/validation/replicate.py).
from knrecall.validation.replicate import VERSION as REPLICATE_VERSION, seed_params

VALIDATE_DIR = f"{RESULTS}/validate"
# Only the embedded world can be rebuilt with another seed; otherwise the aggregate gets no seeds and says why.
VALIDATE_MODEL = WORLD_MODELS[0] if PARAMS.dataset.source == "world" and WORLD_MODELS else ""
VALIDATE_SEEDS = [PARAMS.seed + i for i in range(PARAMS.validation.world_seeds)] if VALIDATE_MODEL else []
VALIDATE_TARGETS = [f"{RESULTS}/metrics/recall.json", f"{RESULTS}/metrics/world.json"]


rule validate_world:
    output:
        recall=f"{VALIDATE_DIR}/seed-{{seed}}/{RESULTS}/metrics/recall.json",
        world=f"{VALIDATE_DIR}/seed-{{seed}}/{RESULTS}/metrics/world.json",
    log:
        f"{LOGS}/validate_world_seed-{{seed}}.log",
    wildcard_constraints:
        seed=r"-?\d+",
    conda:
        "../envs/knrecall.yaml"
    threads: 2
    resources:
        # the nested run's profile (runtime knobs: threads per rule, batch sizes, device); a runtime knob itself
        nested_profile=os.path.join(workflow.basedir, "profiles", "default"),
    params:
        config=lambda wc: as_json(
            seed_params(config, int(wc.seed), VALIDATE_MODEL, PARAMS.models[VALIDATE_MODEL].model_dump(mode="json"))
        ),
        impl=as_json(IMPLEMENTATION),
        workdir=lambda wc: f"{VALIDATE_DIR}/seed-{wc.seed}",
        snakefile=workflow.main_snakefile,
        targets=VALIDATE_TARGETS,
    shell:
        "(printf '%s\\n' {params.config:q} > {params.workdir}/params.yaml"
        " && python -m snakemake --snakefile {params.snakefile:q} --directory {params.workdir:q}"
        " --workflow-profile {resources.nested_profile:q} --cores {threads} --nolock {params.targets})"
        " > {log} 2>&1"


rule validate_worlds:
    input:
        recall=[f"{VALIDATE_DIR}/seed-{seed}/{RESULTS}/metrics/recall.json" for seed in VALIDATE_SEEDS],
        world=[f"{VALIDATE_DIR}/seed-{seed}/{RESULTS}/metrics/world.json" for seed in VALIDATE_SEEDS],
    output:
        metrics=f"{RESULTS}/metrics/validate_worlds.json",
        page=f"{VALIDATE_DIR}/index.html",
    log:
        f"{LOGS}/validate_worlds.log",
    conda:
        "../envs/knrecall.yaml"
    params:
        seeds=VALIDATE_SEEDS,
        model=VALIDATE_MODEL,
        impl=REPLICATE_VERSION,
    shell:
        "python -m knrecall validate-worlds --seeds {params.seeds} --recall {input.recall}"
        " --world {input.world} --model={params.model:q} --out {output.metrics}"
        " --html {output.page} > {log} 2>&1"
