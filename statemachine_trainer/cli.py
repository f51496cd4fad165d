"""The ``statemachine-trainer`` command.

    statemachine-trainer diagram MODULE:OBJECT [--format mermaid|dot]
    statemachine-trainer specs [--check | --write] [--dir DIR]
    statemachine-trainer inspect CKPT [--json]
    statemachine-trainer verify CKPT
    statemachine-trainer diff A B
    statemachine-trainer port FILE.py [--write]

``MODULE`` is an importable module (``my_pkg.loops``) or a path to a ``.py``
file; ``OBJECT`` names a ``Table``, a ``Loop`` subclass (its table is drawn),
a ``Loop`` instance, or a zero-argument callable returning one (its whole
tree is drawn).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit status 2."""


def load_object(spec: str) -> Any:
    """Resolve ``MODULE:OBJECT`` (``MODULE`` may be a dotted name or a ``.py`` path)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"expected MODULE:OBJECT, got {spec!r}; e.g. examples/table_loop.py:CountdownLoop")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.exists():
            raise UsageError(f"no such file: {module_name}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj


def _drawable(obj: Any, tree: bool = False) -> Any:
    from .machine import Loop, Table

    if isinstance(obj, type) and issubclass(obj, Loop):
        return obj() if tree else obj
    if isinstance(obj, (Table, Loop)):
        return obj
    if isinstance(getattr(obj, "entry_loops", None), dict):
        return obj.entry_loops["fit"]  # a Trainer: fit's lifecycle rows around the tree fit() runs
    if callable(obj):
        made = obj()
        if isinstance(made, (Table, Loop)) or isinstance(getattr(made, "entry_loops", None), dict):
            return _drawable(made)
    raise UsageError(f"{obj!r} is not a Table, a Loop class, a Loop instance, a Trainer or a function returning one")


def _diagram(args: argparse.Namespace) -> int:
    from .machine.diagram import to_dot, to_mermaid

    obj = _drawable(load_object(args.target), args.tree)
    sys.stdout.write(to_mermaid(obj) if args.format == "mermaid" else to_dot(obj))
    return 0


def _specs(args: argparse.Namespace) -> int:
    from .specs import check_specs, write_specs

    if args.write:
        write_specs(args.dir)
        print(f"wrote specs to {args.dir or 'specs/'}")
        return 0
    problems = check_specs(args.dir)
    for problem in problems:
        print(problem)
    print("specs: OK" if not problems else f"specs: {len(problems)} difference(s)")
    return 1 if problems else 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from .checkpoint import CheckpointError, summarize
    from .checkpoint._inspect import format_summary

    try:
        summary = summarize(args.checkpoint)
    except CheckpointError as exc:
        print(f"statemachine-trainer: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(summary, indent=1) + "\n" if args.json else format_summary(summary))
    return 0 if summary["valid"] else 1


def _verify(args: argparse.Namespace) -> int:
    from .checkpoint import verify_checkpoint

    problems = verify_checkpoint(args.checkpoint)
    for problem in problems:
        print(problem)
    print(f"{args.checkpoint}: OK" if not problems else f"{args.checkpoint}: INVALID ({len(problems)} problem(s))")
    return 1 if problems else 0


def _consolidate(args: argparse.Namespace) -> int:
    """The module's weights of any checkpoint -- sharded ones gathered whole -- as one ``torch.save`` file."""
    import os

    import torch

    from .checkpoint import CheckpointError, load_module_state

    try:
        weights = load_module_state(args.checkpoint, map_location="cpu")
    except CheckpointError as exc:
        print(f"statemachine-trainer: error: {exc}", file=sys.stderr)
        return 2
    tmp = f"{args.output}.tmp-{os.getpid()}"
    torch.save(weights, tmp)  # then renamed: a reader never sees half a file
    os.replace(tmp, args.output)
    count = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    print(f"{args.output}: {len(weights)} entries, {count} values; load with "
          "model.load_state_dict(torch.load(path, weights_only=True))")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, compare_checkpoints

    try:
        # multi-process ones: replicated state, then each rank's part; stored paths relative to each checkpoint
        difference, notes = compare_checkpoints(args.a, args.b)
    except CheckpointError as exc:
        print(f"statemachine-trainer: error: {exc}", file=sys.stderr)
        return 2
    print("identical" if difference is None else f"first difference: {difference}")
    if notes:
        print(f"note: {len(notes)} stored path(s) differ but point to the same place relative to each checkpoint "
              "(a run under another root):")
        print("\n".join(f"  {note}" for note in notes[:5]) + (f"\n  ... and {len(notes) - 5} more" if len(notes) > 5
                                                                else ""))
    return 0 if difference is None else 1


def _port(args: argparse.Namespace) -> int:
    from .porting import port_source

    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    ported = port_source(path.read_text())
    if args.write:
        path.write_text(ported)
        print(f"ported {path}")
    else:
        sys.stdout.write(ported)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statemachine-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    diagram = sub.add_parser("diagram", help="print a loop or loop tree as Mermaid or Graphviz DOT")
    diagram.add_argument("target", metavar="MODULE:OBJECT")
    diagram.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    diagram.add_argument("--tree", action="store_true",
                         help="for a Loop class: build one (no arguments) and draw its whole tree of sub-loops")
    diagram.set_defaults(func=_diagram)
    specs = sub.add_parser("specs", help="check the code against specs/ (or regenerate tables and schema)")
    mode = specs.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report differences, exit 1 if any (default)")
    mode.add_argument("--write", action="store_true", help="rewrite tables and state schema from the code")
    specs.add_argument("--dir", type=Path, default=None, help="specs directory (default: the repository's specs/)")
    specs.set_defaults(func=_specs)
    inspect = sub.add_parser("inspect", help="describe a checkpoint: versions, where the loop tree stopped, tensors, "
                             "checksums (exit 1 if a checksum fails)")
    inspect.add_argument("checkpoint", metavar="CKPT", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")
    inspect.set_defaults(func=_inspect)
    verify = sub.add_parser("verify", help="check a checkpoint's manifest, checksums and tensors (exit 0 only if valid)")
    verify.add_argument("checkpoint", metavar="CKPT", type=Path)
    verify.set_defaults(func=_verify)
    diff = sub.add_parser("diff", help="compare two checkpoints bit for bit (exit 0 identical, 1 different, 2 unreadable)")
    diff.add_argument("a", metavar="A", type=Path)
    diff.add_argument("b", metavar="B", type=Path)
    diff.set_defaults(func=_diff)
    consolidate = sub.add_parser("consolidate", help="write a checkpoint's module weights (a sharded one's "
                                 "gathered whole) as one state_dict file for inference")
    consolidate.add_argument("checkpoint", help="checkpoint directory (single-process, DDP or FSDP)")
    consolidate.add_argument("output", help="the file to write, e.g. model.pt")
    consolidate.set_defaults(func=_consolidate)
    port = sub.add_parser("port", help="rename a Lightning program's imports and base classes to ours (print it, or "
                          "--write it back)")
    port.add_argument("file", metavar="FILE.py", type=Path)
    port.add_argument("--write", action="store_true", help="rewrite the file in place instead of printing it")
    port.set_defaults(func=_port)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"statemachine-trainer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
