"""What a checkpoint holds, for people: a summary, and the first difference between two.

``summarize`` never unpickles an unchecked file: the tensor summary is taken
(memory-mapped, no data read) only when ``tensors.pt`` matches its checksum.
``first_difference`` compares bit for bit -- ``-0.0`` differs from ``0.0`` and a
NaN equals the same NaN -- because "resumed exactly" means exactly.  For a
multi-process checkpoint both cover every rank's part as well as the
replicated state.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._codec import json_path
from ._errors import CheckpointError
from ._files import parse_json, read_bounded
from ._manifest import STATE, TENSORS, is_sharded_manifest, rank_dir, read_manifest, world_size_of
from ._read import file_status, load_all_parts, safe_torch_load, shard_index, unlisted
from ._shards import SHARDS, shard_names

__all__ = ["compare_checkpoints", "diff_checkpoints", "first_difference", "format_summary", "summarize"]


def _loops(state: Any) -> list[dict[str, Any]]:
    """Each loop's position and progress from a ``state["loops"]`` state set, parents first."""
    loops = state.get("loops") if isinstance(state, dict) else None
    if not (isinstance(loops, dict) and isinstance(loops.get("loops"), dict)):
        return []
    out = []
    for path, entry in loops["loops"].items():  # saved in tree-walk order: parents before children
        entry = entry if isinstance(entry, dict) else {}  # an edited file is described as far as it goes
        position = entry.get("position") if isinstance(entry.get("position"), dict) else {}
        idle = position.get("row") is None and position.get("state") in ("START", "END")
        out.append({"path": path, "position": position, "mid_run": not idle, "progress": entry.get("progress")})
    return out


def _tensor_summary(tensors: Mapping[str, torch.Tensor], largest: int = 5) -> dict[str, Any]:
    sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    dtypes: dict[str, int] = {}
    for t in tensors.values():
        dtypes[str(t.dtype).removeprefix("torch.")] = dtypes.get(str(t.dtype).removeprefix("torch."), 0) + 1
    top = sorted(sizes, key=lambda n: -sizes[n])[:largest]
    return {"count": len(tensors), "bytes": sum(sizes.values()), "dtypes": dtypes,
            "largest": [{"name": n, "shape": list(tensors[n].shape), "dtype": str(tensors[n].dtype).removeprefix(
                "torch."), "bytes": sizes[n]} for n in top]}


def summarize(path: str | Path) -> dict[str, Any]:
    """A JSON-able description of checkpoint ``path``; raises :class:`CheckpointError` if it has no valid manifest.

    ``world_size`` is None for a single-process checkpoint; for a multi-process
    one ``ranks`` holds each rank part's tensor summary, and ``files`` lists
    every part's files.  ``unlisted`` names what the directory holds beyond
    its manifest (which makes it invalid).
    """
    path = Path(path)
    manifest = read_manifest(path)
    status = file_status(path, manifest)
    extra = unlisted(path, manifest)
    world_size = world_size_of(manifest)
    summary: dict[str, Any] = {
        "path": str(path), "format_version": manifest["format_version"], "schema_version": manifest["schema_version"],
        "hash": manifest["hash"], "created": manifest.get("created"), "metadata": manifest.get("metadata", {}),
        "world_size": world_size,
        "files": {name: {"size": manifest["files"][name]["size"], "ok": problem is None, "problem": problem}
                  for name, problem in status.items()},
        "unlisted": extra,
        "valid": not extra and all(problem is None for problem in status.values()), "loops": [], "tensors": None,
        "ranks": None,
    }
    if status[STATE] is None:
        try:
            summary["loops"] = _loops(parse_json(read_bounded(path, STATE, manifest["files"][STATE]["size"]),
                                                 path / STATE))
        except CheckpointError as exc:
            summary["valid"] = False
            summary["files"][STATE].update(ok=False, problem=str(exc))
    summary["tensors"] = _part_tensors(path, "", summary)
    if world_size is not None:
        summary["ranks"] = [{"rank": r, "tensors": _part_tensors(path, rank_dir(r), summary)}
                            for r in range(world_size)]
    summary["sharded"] = _sharded_tensors(path, manifest, summary)
    return summary


def _sharded_tensors(path: Path, manifest: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any] | None:
    """The logical tensors DCP's index lists, summarized like a part's (none is read); None without shards."""
    if not is_sharded_manifest(manifest) or not all(summary["files"][name]["ok"] for name in summary["files"]
                                                    if name.startswith(f"{SHARDS}/")):
        return None
    try:
        index = shard_index(path, manifest, files_checked=True)  # file_status checked them
    except CheckpointError as exc:
        summary["valid"] = False
        summary["files"][f"{SHARDS}/.metadata"].update(ok=False, problem=str(exc))
        return None
    tensors = {name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in index.tensors.items()}
    return _tensor_summary(tensors) | {"files": len(shard_names(manifest["files"])) - 1}


def _part_tensors(path: Path, part: str, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The tensor summary of ``part`` if its tensor file passed its checksum (else None; a load failure is recorded)."""
    name = f"{part}/{TENSORS}" if part else TENSORS
    if not summary["files"][name]["ok"]:
        return None
    try:
        return _tensor_summary(safe_torch_load(path / name, path / name, "cpu", mmap=True))
    except CheckpointError as exc:
        summary["valid"] = False
        summary["files"][name].update(ok=False, problem=str(exc))
        return None


def _progress_line(progress: Any, prefix: str = "") -> list[str]:
    if not isinstance(progress, dict):
        return [f"{prefix}={_short(progress, 40)}"] if prefix else []
    parts = []
    for key, value in progress.items():
        parts += _progress_line(value, f"{prefix}.{key}" if prefix else key)
    return parts


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_summary(summary: dict[str, Any]) -> str:
    """``summarize``'s result as the text ``statemachine-trainer inspect`` prints."""
    meta = summary["metadata"]
    lines = [f"checkpoint {summary['path']}",
             (f"  format version {summary['format_version']}, schema version {summary['schema_version']}, "
              f"created {summary['created']}"),
             "  metadata: " + (", ".join(f"{k}={v}" for k, v in meta.items()) or "(none)")]
    if summary.get("world_size") is not None:
        lines.append(f"  world size {summary['world_size']}: replicated state and {summary['world_size']} rank "
                     "part(s)")
    if summary["loops"]:
        stopped = [f"{lp['path'].rsplit('.', 1)[-1]}.{_position(lp['position'])}" for lp in summary["loops"]
                   if lp["mid_run"]]
        lines.append("  stopped at: " + (" > ".join(stopped) or "(every loop idle)"))
        lines.append("  loops:")
        for lp in summary["loops"]:
            mark = "*" if lp["mid_run"] else " "
            progress = " ".join(p for p in _progress_line(lp["progress"]) if not p.endswith("=0"))
            lines.append(f"   {mark} {'  ' * lp['path'].count('.')}{lp['path']}: {_position(lp['position'])}"
                         + (f"  [{progress}]" if progress else ""))
    lines += _tensor_lines(summary["tensors"], "tensors")
    for part in summary.get("ranks") or []:
        lines += _tensor_lines(part["tensors"], f"{rank_dir(part['rank'])} tensors")
    if summary.get("sharded"):
        lines += _tensor_lines(summary["sharded"], f"sharded tensors (DCP, {summary['sharded']['files']} shard files)")
    lines.append(f"  checksums ({summary['hash']}):")
    for name, entry in summary["files"].items():
        lines.append(f"    {name}: " + ("ok" if entry["ok"] else f"FAILED - {entry['problem']}"))
    lines += [f"    FAILED - {problem}" for problem in summary.get("unlisted", [])]
    return "\n".join(lines) + "\n"


def _tensor_lines(tensors: dict[str, Any] | None, label: str) -> list[str]:
    if tensors is None:
        return []
    dtypes = ", ".join(f"{d}: {n}" for d, n in tensors["dtypes"].items())
    return [f"  {label}: {tensors['count']}, {_human(tensors['bytes'])} ({dtypes})"] + [
        f"    {t['name']}: {t['dtype']}{t['shape']} {_human(t['bytes'])}" for t in tensors["largest"]]


def _position(position: dict[str, Any]) -> str:
    text = _short(position.get("state"), 40)
    if position.get("row") is not None:
        text += f"(row {_short(position['row'], 20)}, hook {_short(position.get('hook', 0), 20)})"
    if position.get("queue"):
        text += f" queued {_short(position['queue'])}"
    return text


def _tensor_difference(a: torch.Tensor, b: torch.Tensor) -> str | None:
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} != {b.dtype}"
    if a.shape != b.shape:
        return f"shape {list(a.shape)} != {list(b.shape)}"
    if a.numel() == 0:
        return None
    a_bits, b_bits = (t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b))
    if torch.equal(a_bits, b_bits):
        return None
    if a.dtype == torch.bool:
        return f"values differ ({int((a != b).sum())} of {a.numel()} elements)"
    wide = torch.complex128 if a.is_complex() else torch.float64
    diff = (a.detach().cpu().to(wide) - b.detach().cpu().to(wide)).abs().nan_to_num(nan=math.inf)
    return f"values differ (max abs difference {diff.max().item():.6g})"


def _float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _kind(value: Any) -> type:
    """What counts as "the same type": an OrderedDict is a dict, a torch.Size a tuple."""
    for kind in (bool, Mapping, tuple, list, torch.Tensor, np.ndarray):
        if isinstance(value, kind):
            return kind
    return type(value)


class _Paths:
    """Stored file paths, compared as locations relative to each checkpoint rather than as strings.

    A run under another root stores other absolute paths (ModelCheckpoint's
    ``dirpath``, its best and last checkpoints, and its state key, which
    names the directory): the same run, not another one.  Two strings count
    as equal when they are equal once every directory above each checkpoint
    is written relative to it (``/runs/a/ckpts/x.ckpt`` beside
    ``/runs/a/ckpts/y.ckpt`` reads ``<checkpoint dir>/x.ckpt``), or when both
    are paths naming the same place relative to their checkpoint.  Each such
    pair is kept as a note.
    """

    def __init__(self, base_a: Path | None = None, base_b: Path | None = None) -> None:
        self.bases = (base_a, base_b)
        self.notes: list[str] = []
        self._patterns = [_ancestor_patterns(base) for base in self.bases if base is not None]

    def _normal(self, value: str, side: int) -> str:
        for pattern, token in self._patterns[side]:
            value = pattern.sub(token, value)
        return value

    def _relative(self, value: str, side: int) -> str:
        base = self.bases[side]
        assert base is not None
        return os.path.relpath(os.path.abspath(value), base)

    def same(self, a: Any, b: Any, where: str) -> bool:
        if not self._patterns or not (isinstance(a, str) and isinstance(b, str) and os.sep in a and os.sep in b):
            return False
        try:
            same = self._normal(a, 0) == self._normal(b, 1) or self._relative(a, 0) == self._relative(b, 1)
        except ValueError:  # e.g. an embedded NUL: not a path
            return False
        if same:
            self.notes.append(f"{where}: {_short(a)} != {_short(b)}, the same path relative to each checkpoint")
        return same


def _ancestor_patterns(base: Path) -> list[tuple[re.Pattern[str], str]]:
    """(regex for a directory above the checkpoint, its replacement), deepest first; the filesystem root excluded."""
    out = []
    for level, directory in enumerate([base, *base.parents][:-1]):
        token = "<checkpoint dir>" + "/.." * level
        out.append((re.compile(re.escape(str(directory)) + r"(?=$|[/'\"\s,;:)}\]])"), token))
    return out


def _diff(a: Any, b: Any, parts: tuple[Any, ...], paths: _Paths) -> str | None:
    where = json_path(parts)
    if _kind(a) is not _kind(b):
        return f"{where}: {type(a).__name__} {_short(a)} != {type(b).__name__} {_short(b)}"
    if isinstance(a, torch.Tensor):
        problem = _tensor_difference(a, b)
        return f"{where} (tensor): {problem}" if problem else None
    if isinstance(a, np.ndarray):
        problem = _tensor_difference(torch.from_numpy(a), torch.from_numpy(b))
        return f"{where} (array): {problem}" if problem else None
    if isinstance(a, Mapping):
        return _diff_dict(a, b, parts, paths)
    if isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _diff(x, y, (*parts, i), paths)
            if found:
                return found
        return None if len(a) == len(b) else f"{where}: length {len(a)} != {len(b)}"
    same = _float_bits(a) == _float_bits(b) if isinstance(a, float) else a == b
    return None if same or paths.same(a, b, where) else f"{where}: {_short(a)} != {_short(b)}"


def _diff_dict(a: Mapping[Any, Any], b: Mapping[Any, Any], parts: tuple[Any, ...], paths: _Paths) -> str | None:
    only_b = [k for k in b if k not in a]
    for key, value in a.items():
        other = key
        if key not in b:  # a path as a key (ModelCheckpoint's best_k_models): its counterpart in b, if any
            other = next((k for k in only_b if paths.same(key, k, json_path((*parts, key)) + " (key)")), None)
            if other is None:
                return f"{json_path((*parts, key))}: only in the first checkpoint"
            only_b.remove(other)
        found = _diff(value, b[other], (*parts, key), paths)
        if found:
            return found
    return f"{json_path((*parts, only_b[0]))}: only in the second checkpoint" if only_b else None


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = value if isinstance(value, str) and limit <= 40 else repr(value)
    except ValueError:  # an int of more digits than Python prints
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_difference(a: Any, b: Any) -> str | None:
    """The first place two decoded states differ (JSON path, both values or the tensors' max difference), or None."""
    return _diff(a, b, (), _Paths())


def _layout(manifest: dict[str, Any]) -> str:
    world_size = world_size_of(manifest)
    return "single-process" if world_size is None else f"world size {world_size}"


def diff_checkpoints(a: str | Path, b: str | Path) -> str | None:
    """The first difference between checkpoints ``a`` and ``b`` (replicated state first, then rank by rank), or None.

    Metadata is not compared, nor where stored paths point (see
    :func:`compare_checkpoints`).  Both are checked completely first; a
    damaged one raises :class:`CheckpointError`.  A difference inside a rank
    part is prefixed with it: ``rank-1: $.rng.torch (tensor): values differ ...``.
    """
    return compare_checkpoints(a, b)[0]


def compare_checkpoints(a: str | Path, b: str | Path) -> tuple[str | None, list[str]]:
    """``(first difference or None, notes)``: the runs are compared, not where they were stored.

    A stored path (ModelCheckpoint's ``dirpath`` and checkpoint paths, any
    string with a separator) that names the same place relative to each
    checkpoint's directory is no difference; each such pair is a note.
    """
    state_a, ranks_a, manifest_a = load_all_parts(a, map_location="cpu")
    state_b, ranks_b, manifest_b = load_all_parts(b, map_location="cpu")
    if _layout(manifest_a) != _layout(manifest_b):
        return f"layout: {_layout(manifest_a)} != {_layout(manifest_b)}", []
    paths = _Paths(Path(a).absolute().parent, Path(b).absolute().parent)
    found = _diff(state_a, state_b, (), paths)
    for rank, (x, y) in enumerate(zip(ranks_a or [], ranks_b or [])):
        if found is not None:
            break
        found = _diff(x, y, (), paths)
        found = found and f"{rank_dir(rank)}: {found}"
    return found, paths.notes
