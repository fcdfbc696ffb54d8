# kvbench: one job per cell -> JSON records -> CSV tables (pandas) -> figures (seaborn) -> bundle.zip
#   snakemake --profile workflow/profiles/default                        # config's `run` sweeps (make run)
#   snakemake --profile workflow/profiles/default --config run='[tiny]'  # another sweep
#   snakemake --profile workflow/profiles/default --report report.zip    # the report of what ran
# Pass a profile (workflow/profiles/: default for this machine, gpu, slurm): Snakemake picks one up
# by itself only beside a workflow/Snakefile, and this Snakefile sits at the top.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# `snakemake --report report.zip`: this page, then each sweep's figures, tables, explanation,
# attention GIF and bundle with the captions in workflow/report/.
report: "workflow/report/workflow.rst"


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
        run_records,
        expand("results/{sweep}/bundle.zip", sweep=config.get("run", [])),
        COMPARE_TARGETS,
