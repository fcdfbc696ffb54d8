"""A cell's code inputs (kvbench/core/code_inputs.py): the shared measurement code plus its own engine's files."""

from pathlib import Path

import kvbench
from kvbench.core.code_inputs import cell_code, engine_files

PACKAGE = Path(kvbench.__file__).parent


def rel(paths) -> set[str]:
    return {Path(p).relative_to(PACKAGE).as_posix() for p in paths}


def test_an_engine_brings_its_own_file_and_the_engine_files_it_imports():
    assert rel(engine_files(PACKAGE, "kvbench")) == {"engines/kvbench.py", "engines/attention_op.py"}
    hf = {"engines/hf.py", "engines/hf_cache.py"}
    assert rel(engine_files(PACKAGE, "hf")) == hf
    assert rel(engine_files(PACKAGE, "ct2")) == {"engines/ct2.py", *hf}
    assert rel(engine_files(PACKAGE, "llamacpp")) == {"engines/llamacpp.py", "engines/ct2.py", *hf}


def test_a_cells_code_is_the_shared_layers_and_its_engine_not_the_analysis_or_the_other_commands():
    code = rel(cell_code(PACKAGE, "kvbench"))
    for needed in ("caches/static.py", "models/gpt2.py", "engines/generate.py", "engines/base.py", "measure/cell.py"):
        assert needed in code, needed
    assert "schemas/record.schema.json" in code and "cli/cell.py" in code
    assert not {c for c in code if c.startswith("analysis/")}
    for other in ("engines/hf.py", "engines/ct2.py", "engines/llamacpp.py", "cli/sample.py", "cli/visualize.py"):
        assert other not in code, other
    assert "engines/llamacpp.py" in rel(cell_code(PACKAGE, "llamacpp"))


def test_an_analysis_rule_depends_on_every_module_its_command_imports():
    """explain imports speed_table (and it, frame): editing either re-runs the explanation; the models do not."""
    from kvbench.core.code_inputs import module_files

    got = rel(module_files(PACKAGE, "analysis/explain.py"))
    assert {"analysis/explain.py", "analysis/speed_table.py", "analysis/alloc_table.py", "core/record.py"} <= got
    assert not {c for c in got if c.startswith(("models/", "caches/", "engines/"))}
