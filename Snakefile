# kvbench: one job per cell -> JSON records -> CSV tables (pandas) -> figures (seaborn) -> bundle.zip
#   snakemake                       # the sweeps in config/config.yaml's `run` (default: cpu)
#   snakemake --config run='[tiny]' # another sweep
# Profiles: workflow/profiles/default (local, used automatically), gpu, slurm.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/bundle.smk"
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        # Records are targets too: Snakemake would otherwise treat a deleted record as a spent
        # intermediate of an up-to-date bundle and not measure it again.
        [kvsweep.cell_path(s, c) for s in config.get("run", []) for c in sweep_cells(s)],
        expand("results/{sweep}/bundle.zip", sweep=config.get("run", [])),
        COMPARE_TARGETS,
