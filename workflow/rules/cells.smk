# One job per cell: `kvbench cell` measures it and writes its record atomically.


rule cell:
    input:
        code=MEASUREMENT_CODE,
    output:
        record=kvsweep.CELL_PATTERN,
    log:
        "results/{sweep}/logs/cells/{engine}/{model}/{dtype}/{kv_mode}/b{batch}-p{prompt_len}-n{new_tokens}-{attention}-kv{n_kv_head}.log",
    wildcard_constraints:
        batch=r"\d+",
        prompt_len=r"\d+",
        new_tokens=r"\d+",
        n_kv_head=r"all|\d+",
    conda:
        "../../envs/kvbench.yaml"
    container:
        config.get("container")
    threads: cell_threads
    resources:
        gpu=lambda wc: 1 if on_gpu(wc) else 0,
        mem_mb=lambda wc: settings(wc).get("mem_mb", 8000),
        runtime=lambda wc: settings(wc).get("runtime", 60),
    params:
        flags=cell_flags,  # every setting that changes the result: a change reruns this cell only
    shell:
        "kvbench cell {params.flags} --threads {threads} --out {output.record} 2> {log} && tail -n 1 {log}"
