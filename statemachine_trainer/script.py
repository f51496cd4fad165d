"""The flags every resumable training script takes, so a kill -9 is one ``--resume latest`` away.

``add_run_flags(parser)`` adds ``--root``, ``--checkpoint-every``,
``--max-steps``, ``--resume``, ``--overwrite``, ``--seed`` and ``--fast-dev-run``;
``trainer_kwargs(args)`` turns them into Trainer arguments (a step-interval
``ModelCheckpoint`` under ``ROOT/checkpoints`` keeping the newest three);
``save_final(trainer, args)`` writes ``ROOT/final.ckpt`` at the end, which is
what ``statemachine-trainer diff`` and
:func:`statemachine_trainer.testing.assert_kill_resume_exact` compare::

    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    args = parser.parse_args()
    trainer = Trainer(max_epochs=10, **trainer_kwargs(args))
    trainer.fit(model, loader, ckpt_path=args.resume)
    save_final(trainer, args)

All six examples take exactly these flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._optim import ConfigError

__all__ = ["add_run_flags", "save_final", "trainer_kwargs"]


def add_run_flags(parser: argparse.ArgumentParser, *, max_steps_counts: str = "optimizer steps",
                  checkpoint_every: int = 50, fast_dev_run: str = "run 2 batches of every loop, then stop",
                  root: str | None = None) -> None:
    """Add the common flags; ``max_steps_counts`` says what ``--max-steps`` caps in this script."""
    parser.add_argument("--root", default=root, help="write checkpoints under ROOT/checkpoints and the final "
                        f"state to ROOT/final.ckpt (default: {root or 'write nothing'})")
    parser.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="N",
                        help=f"optimizer steps between checkpoints (default {checkpoint_every}; needs --root)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help=f"stop after N {max_steps_counts} (default: no cap)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="'latest' (the newest valid checkpoint under ROOT/checkpoints) or a checkpoint path")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: delete ROOT/checkpoints and ROOT/final.ckpt of an earlier run first")
    parser.add_argument("--seed", type=int, default=0, help="seeds everything: same seed, same run (default 0)")
    parser.add_argument("--fast-dev-run", action="store_true", help=fast_dev_run)


def trainer_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """Trainer arguments for the common flags (``overrides`` win; given ``callbacks`` come before ours).

    The given callbacks come first, so a ModelCheckpoint among them is the
    one ``ckpt_path="best"``/``"last"`` and ``trainer.callback(ModelCheckpoint)`` mean.
    """
    from .callbacks import ModelCheckpoint

    if args.resume is not None and args.root is None and args.resume == "latest":
        raise ConfigError("--resume latest needs --root: it looks for the newest checkpoint under ROOT/checkpoints.")
    if args.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}.")
    callbacks: list[Any] = list(overrides.pop("callbacks", []))
    if args.root is not None and args.resume is None:
        _start_fresh(Path(args.root), args.overwrite)
    if args.root is not None:
        callbacks.append(ModelCheckpoint(dirpath=Path(args.root) / "checkpoints", save_top_k=3,
                                         every_n_train_steps=args.checkpoint_every))
    kwargs: dict[str, Any] = {
        "seed": args.seed, "default_root_dir": args.root, "callbacks": callbacks,
        "enable_checkpointing": args.root is not None, "max_steps": -1 if args.max_steps is None else args.max_steps,
        "fast_dev_run": 2 if args.fast_dev_run else False, "logger": False, "enable_progress_bar": False,
    }
    return {**kwargs, **overrides}


def _start_fresh(root: Path, overwrite: bool) -> None:
    """A new run under ``root``: an earlier run's checkpoints there are deleted (``--overwrite``) or refused.

    The Trainer refuses a new run into a directory holding another run's
    checkpoints too (``_run_dir``); here the refusal comes first, naming the
    script's own ways out.
    """
    import shutil

    from .checkpoint._latest import candidates

    checkpoints = root / "checkpoints"
    found = candidates(checkpoints)
    if overwrite:
        shutil.rmtree(checkpoints, ignore_errors=True)  # every rank may do it: ignore_errors, then a fresh directory
        shutil.rmtree(root / "final.ckpt", ignore_errors=True)
    elif found:
        raise ConfigError(f"{checkpoints} holds the checkpoints of an earlier run (newest: {found[0].name}). Resume "
                          "it with --resume latest, start over with --overwrite (deletes them and ROOT/final.ckpt), "
                          "or pass another --root.")


def save_final(trainer: Any, args: argparse.Namespace) -> Path | None:
    """Write the finished run's state to ``ROOT/final.ckpt`` (nothing without ``--root``)."""
    if args.root is None:
        return None
    return trainer.save_checkpoint(Path(args.root) / "final.ckpt")
