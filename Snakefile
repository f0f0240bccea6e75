# knrecall: do language models recall the facts behind a two-hop question while they answer it?
# Entry point. Science parameters: params.yaml (validated against schemas/params.schema.yaml).
# Runtime knobs (cores, threads, batch size, device): profiles/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/world.smk"
include: "rules/data.smk"
include: "rules/answer.smk"
include: "rules/attribution.smk"
include: "rules/recall.smk"
include: "rules/interventions.smk"
include: "rules/validation.smk"
include: "rules/report.smk"
include: "rules/validate.smk"


# Rules that only merge or summarise small metrics files run where Snakemake runs, never as cluster jobs.
localrules:
    all,
    world_metrics,
    attribution_metrics,
    recall_metrics,
    intervention_metrics,


onsuccess:
    remove_stale_shards()


rule all:
    default_target: True
    input:
        all_targets(),
