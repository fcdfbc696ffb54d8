# A sweep against a baseline run (a published folder, a bundle or another results/<sweep>):
#   snakemake --config run='[cpu]' baseline=results/published/<device>/cpu
# writes results/<sweep>/compare/: compare.md (B/A per cell, same/faster/slower, what differs
# between the environments), compare.csv and the figure. Without `baseline` nothing is compared.


# A sweep is one folder name (the config schema's pattern), so a baseline under
# results/published/<device>/<sweep>/ never looks like an output of this workflow's rules to rebuild.
wildcard_constraints:
    sweep=r"[^/]+",


BASELINE = str(config.get("baseline") or "")
# A published folder's records are in its bundle.zip: that file is the input Snakemake watches.
BASELINE_INPUT = str(Path(BASELINE, "bundle.zip")) if BASELINE and Path(BASELINE, "bundle.zip").is_file() else BASELINE
COMPARE_TARGETS = expand("results/{sweep}/compare", sweep=config.get("run", [])) if BASELINE else []


rule compare:
    input:
        records=cell_records,
        baseline=BASELINE_INPUT or [],
        code=analysis_code("compare.py", "frame.py", "bundle.py", "report.py", "templates/compare.md.j2"),
    output:
        compare=report(
            directory("results/{sweep}/compare"),
            patterns=["{name}.png"],
            caption="../report/compare.rst",
            category="{sweep}",
        ),
    log:
        "results/{sweep}/logs/compare.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench compare {input.baseline} results/{wildcards.sweep} --out {output.compare} 2> {log}"
