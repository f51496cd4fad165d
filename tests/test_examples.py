"""The README's main example: digits.py reaches the promised accuracy and runs in fast-dev-run mode."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_running_again_under_the_same_root_is_refused_unless_resumed_or_overwritten(tmp_path):
    args = ("--epochs", "1", "--root", str(tmp_path))
    run_example(*args, cwd=tmp_path)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    again = subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode != 0
    assert "holds the checkpoints of an earlier run" in again.stderr and "--overwrite" in again.stderr
    assert before == sorted(p.name for p in (tmp_path / "checkpoints").iterdir())  # nothing deleted by the refusal
    run_example(*args, "--overwrite", cwd=tmp_path)  # starts over
    assert (tmp_path / "final.ckpt" / "manifest.json").is_file()


def test_digits_fast_dev_run(tmp_path):
    out = run_example("--fast-dev-run", "--root", str(tmp_path), cwd=tmp_path)
    assert re.fullmatch(r"val_acc=\d\.\d{4}", out.strip().splitlines()[-1])
    assert not (tmp_path / "checkpoints").exists()  # fast-dev-run writes no checkpoints


def test_digits_reaches_95_percent_and_keeps_checkpoints(tmp_path):
    out = run_example("--root", str(tmp_path), cwd=tmp_path)
    last = out.strip().splitlines()[-1]
    assert float(last.removeprefix("val_acc=")) >= 0.95, out
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))
    # The best epoch + last.ckpt, and the newest 3 of the --checkpoint-every ones (steps 200, 300, 400 of 460).
    assert "last.ckpt" in checkpoints and len(checkpoints) == 5, checkpoints
    assert [name for name in checkpoints if name.endswith(("step=200.ckpt", "step=300.ckpt", "step=400.ckpt"))]
    assert (tmp_path / "final.ckpt" / "manifest.json").is_file()
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()
