"""README examples run as written; the CLI, the specs and the example script work from a shell."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from statemachine_trainer.cli import main
from statemachine_trainer.machine import LOOP_TABLE
from statemachine_trainer.machine.diagram import to_dot, to_mermaid
from statemachine_trainer.specs import check_specs, write_specs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLI = [sys.executable, "-m", "statemachine_trainer.cli"]


def test_readme_python_blocks_run_in_order():
    namespace: dict = {"__name__": "readme"}
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - running our own docs


def test_readme_quotes_the_real_table_error():
    from statemachine_trainer import END, START, Row, Table, TableError

    with pytest.raises(TableError) as info:
        Table(states=(START, "TRAIN", "LOST", END),
              rows=(Row("run", START, "TRAIN"), Row("next", "TRAIN", END), Row("go", "LOST", END)))
    first, second = str(info.value).split("; ", 1)
    assert f"# {first};" in README and f"# {second}" in README


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in README and "<!-- test-command -->" in ci
    command = README.split("<!-- test-command -->")[1].split("```bash\n")[1].split("\n```")[0]
    assert "pytest" in command and "torch==2.13.0" in command and "--hypothesis-profile=ci" in command


def test_diagram_command_prints_mermaid_for_a_table_defined_loop():
    result = subprocess.run([*CLI, "diagram", "examples/table_loop.py:PhasedFit"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stateDiagram-v2\n")
    assert "WARMUP --> TRAIN: step [warmed_up]" in result.stdout
    assert "TRAIN --> END: step [converged] / report" in result.stdout


def test_diagram_command_reports_bad_targets():
    result = subprocess.run([*CLI, "diagram", "examples/table_loop.py:Nope"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2 and "has no attribute 'Nope'" in result.stderr
    assert main(["diagram", "no-colon"]) == 2


def test_dot_and_mermaid_draw_every_row_and_the_restart_edges():
    dot, mermaid = to_dot(LOOP_TABLE), to_mermaid(LOOP_TABLE)
    for row in LOOP_TABLE.rows:
        assert f'"{row.source}" -> "{row.dest}" [label="{row.label()}"];' in dot
        assert f"{row.source} --> {row.dest}: {row.label()}" in mermaid
    assert '"RESTARTING" -> "ADVANCE" [label="restart", style=dashed];' in dot
    assert dot.startswith('digraph "Loop" {') and dot.rstrip().endswith("}")


def test_tree_diagrams_nest_each_loop():
    from tests.test_loop import Outer

    mermaid, dot = to_mermaid(Outer()), to_dot(Outer())
    assert 'state "outer (Outer)" as outer {' in mermaid
    assert 'state "outer.inner (Inner)" as outer__inner {' in mermaid
    assert "outer__inner__ADVANCE --> outer__inner__END: advance [done] / on_run_end" in mermaid
    assert 'subgraph "cluster_outer.inner" {' in dot


def test_code_matches_specs():
    assert check_specs() == []


def test_specs_check_catches_drift(tmp_path):
    write_specs(tmp_path)
    spec = tmp_path / "loops" / "Loop.json"
    from statemachine_trainer.specs import BUILTIN_LOOPS

    assert check_specs(tmp_path) == [f"loops/{name}.json: no hook_order scenarios" for name in sorted(BUILTIN_LOOPS)]
    spec.write_text((ROOT / "specs" / "loops" / "Loop.json").read_text().replace('"on_skip"', '"on_skipped"', 1))
    problems = check_specs(tmp_path)
    assert any("table differs" in p for p in problems)
    (tmp_path / "state_schema.json").write_text("{}")
    assert "state_schema.json: differs from the state classes in the code" in check_specs(tmp_path)
    result = subprocess.run([*CLI, "specs", "--dir", str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "difference(s)" in result.stdout


def test_example_resumes_bit_identically():
    result = subprocess.run([sys.executable, "examples/table_loop.py", "--interrupt-at", "30"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "resumed run bit-identical to uninterrupted: True" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("final_loss=")


def test_diagram_of_the_trainer_tree(capsys):
    assert main(["diagram", "statemachine_trainer.loops:FitLoop", "--tree"]) == 0
    out = capsys.readouterr().out
    for path in ("fit_loop.epoch_loop (TrainingEpochLoop)", "fit_loop.epoch_loop.batch_loop.generator_loop",
                 "fit_loop.epoch_loop.val_loop (EvaluationLoop)", "VALIDATE", "SANITY_CHECK"):
        assert path in out
    assert main(["diagram", "statemachine_trainer.loops:FitLoop"]) == 0
    assert "epoch_loop" not in capsys.readouterr().out  # a class without --tree: its own table only


@pytest.mark.parametrize("name", ["table_loop", "val_guided", "kfold", "active_learning"])
def test_readme_states_each_custom_loops_line_count(name):
    block = (ROOT / "examples" / f"{name}.py").read_text().split("# --- loop ---\n")[1]
    count = sum(1 for line in block.splitlines() if line.strip())
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}.py` |"))
    assert f"| {count} lines" in row, (count, row)
