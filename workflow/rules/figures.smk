# Tables -> seaborn figures (PNG + SVG), byte-identical for the same tables.


rule figures:
    input:
        tables="results/{sweep}/tables",
        code=[PACKAGE / "analysis" / "figures.py", *ANALYSIS_COMMON],
    output:
        figures=report(
            directory("results/{sweep}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="{sweep}",
        ),
    log:
        "results/{sweep}/logs/figures.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench figures --tables {input.tables} --out {output.figures} 2> {log}"
