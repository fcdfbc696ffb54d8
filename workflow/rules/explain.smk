# Tables -> explanation.md (write-up 004's point: every claim beside a measured number), and the
# write-up 000 dashboard: an animated GIF of one attention head while the cache grows.


rule explain:
    input:
        tables="results/{sweep}/tables",
        code=[PACKAGE / "analysis" / "explain.py", *ANALYSIS_COMMON],
    output:
        explanation=report("results/{sweep}/explanation.md", caption="../report/explanation.rst", category="{sweep}"),
    log:
        "results/{sweep}/logs/explain.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench explain --tables {input.tables} --out {output.explanation} 2> {log}"


rule visualize:
    input:
        code=[PACKAGE / "visualize.py", PACKAGE / "model.py", PACKAGE / "kv_cache.py"],
    output:
        gif="results/{sweep}/kv_attention.gif",
    log:
        "results/{sweep}/logs/visualize.log",
    params:
        flags=visualize_flags,
    localrule: True  # seconds of CPU work: not worth a cluster job
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench visualize {params.flags} --out {output.gif} 2> {log}"
