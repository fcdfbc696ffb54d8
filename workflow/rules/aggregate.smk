# Records -> tables with pandas: cells.csv, per_step.csv, sweep_kv_<mode>.csv, speedup.csv, summary.md.
# The records are named by the sweep (not listed on the command line: thousands of paths exceed a shell line).


rule aggregate:
    input:
        records=cell_records,
        code=analysis_code("aggregate.py", "frame.py", "report.py", "approx_price.py", "templates/summary.md.j2"),
    output:
        tables=report(
            directory("results/{sweep}/tables"),
            patterns=["{name}.csv", "{name}.md"],
            caption="../report/tables.rst",
            category="{sweep}",
            subcategory="tables",
        ),
    log:
        "results/{sweep}/logs/aggregate.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "kvbench aggregate --sweep {wildcards.sweep} --config {params.config} --out {output.tables} 2> {log}"
