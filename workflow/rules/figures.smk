# Tables -> seaborn figures (PNG + SVG), byte-identical for the same tables; and write-up 000's
# dashboard, an animated GIF of one attention head while the cache grows.


rule figures:
    input:
        tables="results/{sweep}/tables",
        code=analysis_code(
            "figures.py",
            "facets.py",
            "claims.py",
            "data/claims.csv",
            "frame.py",
            "aggregate.py",
            "report.py",
            "approx_figures.py",
            "approx_price.py",
            "alloc_figures.py",
        ),
    output:
        figures=report(
            directory("results/{sweep}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="{sweep}",
            subcategory="figures",
        ),
    log:
        "results/{sweep}/logs/figures.log",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench figures --tables {input.tables} --out {output.figures} 2> {log}"


rule visualize:
    input:
        code=[
            *analysis_code("attention_gif.py"),
            PACKAGE / "cli" / "visualize.py",
            PACKAGE / "models" / "gpt2.py",
            PACKAGE / "engines" / "generate.py",
        ],
    output:
        gif=report("results/{sweep}/kv_attention.gif", caption="../report/kv_attention.rst", category="{sweep}"),
    log:
        "results/{sweep}/logs/visualize.log",
    localrule: True  # seconds of CPU work: not worth a cluster job
    conda:
        "../../envs/kvbench.yaml"
    params:
        flags=visualize_flags,
    shell:
        "kvbench visualize {params.flags} --out {output.gif} 2> {log}"
