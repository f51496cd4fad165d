"""``statemachine-trainer inspect / verify / diff`` on real checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from statemachine_trainer.checkpoint import save_checkpoint_dir
from statemachine_trainer.cli import main
from statemachine_trainer.state import SCHEMA_VERSION


def _loops(epoch_state: str = "ADVANCE", row: int | None = 2) -> dict[str, Any]:
    def loop(state: str, row: int | None = None, completed: int = 0) -> dict[str, Any]:
        return {"position": {"state": state, "row": row, "hook": 0, "queue": []},
                "progress": {"total": {"completed": completed}}, "fields": {}, "extra": {}}

    return {"schema_version": SCHEMA_VERSION, "loops": {"fit_loop": loop("ADVANCE", completed=3),
                                           "fit_loop.epoch_loop": loop(epoch_state, row, completed=7),
                                           "fit_loop.val_loop": loop("START")}}


def _state(scale: float = 1.0, **changes: Any) -> dict[str, Any]:
    state = {"module": {"net.0.weight": torch.ones(4, 3) * scale, "net.0.bias": torch.zeros(4)},
             "loops": _loops(), "lr": 0.1}
    state.update(changes)
    return state


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_checkpoint_dir(tmp_path / "step=7", _state(), {"step": 7, "epoch": 1})


def test_inspect_text(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"format version 1, schema version {SCHEMA_VERSION}" in out
    assert "step=7, epoch=1" in out
    assert "stopped at: fit_loop.ADVANCE > epoch_loop.ADVANCE(row 2, hook 0)" in out
    assert "   * fit_loop: ADVANCE  [total.completed=3]" in out
    assert "     fit_loop.val_loop: START" in out  # idle: no mark
    assert "tensors: 2, 64 B (float32: 2)" in out
    assert "net.0.weight: float32[4, 3] 48 B" in out
    assert "tensors.pt: ok" in out and "state.json: ok" in out


def test_inspect_json_and_a_failed_checksum(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ckpt), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["valid"] and summary["metadata"] == {"step": 7, "epoch": 1}
    assert [lp["mid_run"] for lp in summary["loops"]] == [True, True, False]
    assert summary["tensors"]["count"] == 2 and summary["tensors"]["bytes"] == 64
    data = bytearray((ckpt / "tensors.pt").read_bytes())
    data[-30] ^= 0xFF
    (ckpt / "tensors.pt").write_bytes(bytes(data))
    assert main(["inspect", str(ckpt), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert not summary["files"]["tensors.pt"]["ok"] and summary["tensors"] is None
    assert "checksum" in summary["files"]["tensors.pt"]["problem"]


def test_verify_exit_codes(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(ckpt)]) == 0
    assert "OK" in capsys.readouterr().out
    with open(ckpt / "state.json", "ab") as f:
        f.write(b" ")
    assert main(["verify", str(ckpt)]) == 1
    assert "state.json has" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing")]) == 1


def test_diff_identical_ignores_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = save_checkpoint_dir(tmp_path / "a", _state(), {"step": 7})
    b = save_checkpoint_dir(tmp_path / "b", _state(), {"step": 8, "host": "other"})
    assert main(["diff", str(a), str(b)]) == 0
    assert "identical" in capsys.readouterr().out


@pytest.mark.parametrize(("other", "expected"), [
    (_state(1.5), "$.module['net.0.weight'] (tensor): values differ (max abs difference 0.5)"),
    (_state(lr=0.2), "$.lr: 0.1 != 0.2"),
    (_state(loops=_loops(row=3)), "$.loops.loops['fit_loop.epoch_loop'].position.row: 2 != 3"),
    (_state(module={"net.0.weight": torch.ones(4, 3, dtype=torch.float64), "net.0.bias": torch.zeros(4)}),
     "$.module['net.0.weight'] (tensor): dtype torch.float32 != torch.float64"),
    (_state(lr=-0.0) | {"lr": 0.1, "extra": 1}, "$.extra: only in the second checkpoint"),
])
def test_diff_reports_the_first_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str], other: Any,
                                           expected: str) -> None:
    a = save_checkpoint_dir(tmp_path / "a", _state(), {"step": 7})
    b = save_checkpoint_dir(tmp_path / "b", other, {"step": 7})
    assert main(["diff", str(a), str(b)]) == 1
    assert capsys.readouterr().out.strip() == f"first difference: {expected}"


def test_diff_is_bitwise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = save_checkpoint_dir(tmp_path / "a", {"x": torch.tensor([0.0, float("nan")])}, {})
    b = save_checkpoint_dir(tmp_path / "b", {"x": torch.tensor([-0.0, float("nan")])}, {})
    c = save_checkpoint_dir(tmp_path / "c", {"x": torch.tensor([0.0, float("nan")])}, {})
    assert main(["diff", str(a), str(c)]) == 0  # the same NaN is the same value
    assert main(["diff", str(a), str(b)]) == 1  # -0.0 is not 0.0, bit for bit
    assert "$.x (tensor): values differ" in capsys.readouterr().out


def test_diff_of_an_invalid_checkpoint_is_an_error(ckpt: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (ckpt / "manifest.json").unlink()
    assert main(["diff", str(ckpt), str(ckpt)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
