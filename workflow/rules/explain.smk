# Tables -> explanation.md (write-up 004's point: every claim beside a measured number).


rule explain:
    input:
        tables="results/{sweep}/tables",
        code=analysis_code(
            "explain.py",
            "claims.py",
            "data/claims.csv",
            "frame.py",
            "aggregate.py",
            "report.py",
            "approx_price.py",
            "templates/explanation.md.j2",
        ),
    output:
        explanation=report("results/{sweep}/explanation.md", caption="../report/explanation.rst", category="{sweep}"),
    log:
        "results/{sweep}/logs/explain.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench explain --tables {input.tables} --out {output.explanation} 2> {log}"
