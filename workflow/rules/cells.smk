# One job per cell: `kvbench cell` measures it and writes its record atomically.


rule cell:
    input:
        code=cell_code,
    output:
        record=kvsweep.CELL_PATTERN,
    log:
        kvsweep.CELL_LOG_PATTERN,
    wildcard_constraints:
        batch=r"\d+",
        prompt_len=r"\d+",
        new_tokens=r"\d+",
        # '-t4' when the grid sets threads: its --threads, in the flags after the job's, is the one used
        threads=r"(-t\d+)?",
        # '-s0.5', '-x8', '-k16' when the grid sets a ragged spread, a shared prefix, paged's block size
        prompt_spread=r"(-s[0-9.]+)?",
        shared_prefix=r"(-x\d+)?",
        block_tokens=r"(-k\d+)?",
        n_kv_head=rf"{kvsweep.ALL_HEADS}|\d+",
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
    # One line per finished cell, its log's last: the result, or what went wrong and where the log is.
    shell:
        "kvbench cell --threads {threads} {params.flags} --out {output.record} 2> {log} && tail -n 1 {log} "
        '|| {{ echo "kvbench cell failed: $(tail -n 1 {log}) (log: {log})" >&2; exit 1; }}'


# Damaged records (kvbench/core/record.py) moved aside to results/<sweep>/damaged/ before the cells are
# planned, so their cells count as missing and are measured again in the same run. Only in the DAG
# when the sweep has damage (common.smk, `records`); the output lists what was moved, one per run.
checkpoint set_aside:
    output:
        moved="results/{sweep}/damaged/moved-{stamp}.txt",
    log:
        "results/{sweep}/logs/set_aside-{stamp}.log",
    wildcard_constraints:
        stamp=r"\d{8}T\d{6}Z",
    localrule: True
    conda:
        "../../envs/kvbench.yaml"
    shell:
        "kvbench check-records results/{wildcards.sweep}/cells 2> {log} && tee {output.moved} < {log}"
