# Records -> tables with pandas: cells.csv, per_step.csv, sweep_kv_<mode>.csv, speedup.csv, summary.md


rule aggregate:
    input:
        records=cell_records,
        code=[PACKAGE / "analysis" / "aggregate.py", *ANALYSIS_COMMON],
    output:
        tables=directory("results/{sweep}/tables"),
    log:
        "results/{sweep}/logs/aggregate.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    script:
        "../scripts/aggregate.py"
