# Figures + tables + records + config + environment -> one deterministic zip with a sha256 manifest.


rule bundle:
    input:
        records=cell_records,
        tables="results/{sweep}/tables",
        figures="results/{sweep}/figures",
        explanation="results/{sweep}/explanation.md",
        gif="results/{sweep}/kv_attention.gif",
        config=CONFIG_FILE,
        code=analysis_code("bundle.py", "frame.py", "report.py", "templates/index.md.j2"),
    output:
        bundle=report("results/{sweep}/bundle.zip", caption="../report/bundle.rst", category="{sweep}"),
    log:
        "results/{sweep}/logs/bundle.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench bundle --sweep-dir results/{wildcards.sweep} --config {input.config} --out {output.bundle} "
        "--extra {input.explanation} {input.gif} 2> {log}"
