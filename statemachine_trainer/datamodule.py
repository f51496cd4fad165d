"""``DataModule``: a run's data in one object, with Lightning's ``LightningDataModule`` contract.

A data module keeps everything about the data together -- download, split,
transforms, the four dataloaders -- so one module can be trained on several
datasets and one dataset shared by several modules.  The Trainer calls, for
``trainer.fit(model, datamodule=dm)`` (and ``validate``/``test``/``predict``):

1. ``prepare_data()`` -- once per machine (local rank 0 under
   ``strategy="ddp"``; the other ranks wait): download, write files; assign no
   state, the other ranks would not have it;
2. ``setup(stage)`` -- on every rank, before the module's ``setup`` and
   ``configure_optimizers``: load and split, build datasets;
3. ``train_dataloader()`` / ``val_dataloader()`` / ``test_dataloader()`` /
   ``predict_dataloader()`` -- those of the stage, right after ``setup``
   (before ``configure_optimizers``, so ``trainer.estimated_stepping_batches``
   works there);
4. ``teardown(stage)`` -- at the end, also after a failure.

A data module given to ``fit`` replaces the module's own dataloader methods.
``state_dict()`` returns what the data module must remember across a resume
(JSON-able values and tensors); it is saved in every checkpoint ``fit``
writes, under ``$.datamodule``, and given back to ``load_state_dict`` when a
run resumes from it -- before ``setup``'s dataloaders are read, as Lightning
does.  The batch *position* inside an epoch is not part of it: the Trainer
keeps that itself, for every dataloader.
"""

from __future__ import annotations

from typing import Any

from ._hook_spec import install_stubs
from ._refused import UnsupportedError
from .machine import noop_hook
from .module import HyperParameters, TrainingModule

__all__ = ["DataModule"]


@install_stubs(owner="datamodule")  # prepare_data, setup, teardown: no-ops until overridden (``_hook_spec.HOOKS``)
class DataModule:
    """Subclass it and define the dataloaders of the stages you run; override the hooks you need."""

    #: As Lightning's flag: True runs ``prepare_data`` on local rank 0 of every machine, False on global rank 0 only.
    prepare_data_per_node: bool = True

    # -- dataloaders (define those of the stages you run; None means "this data module has none") --
    train_dataloader: Any = None
    val_dataloader: Any = None
    test_dataloader: Any = None
    predict_dataloader: Any = None

    def __init__(self) -> None:
        self.trainer: Any = None  # the run this data module takes part in; set when an entry point starts
        self.hparams = HyperParameters()
        self._log_hyperparams = True  # save_hyperparameters(logger=False) turns it off

    #: Records the calling ``__init__``'s arguments in ``self.hparams``, as ``TrainingModule``'s does.
    save_hyperparameters = TrainingModule.save_hyperparameters
    hyperparameters_to_log = TrainingModule.hyperparameters_to_log
    hparams_initial = TrainingModule.hparams_initial

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse Lightning's batch transfer hooks on a data module, which the loops would never call."""
        super().__init_subclass__(**kwargs)
        defined = [name for name in _MODULE_ONLY_HOOKS if name in vars(cls)]
        if defined:
            raise UnsupportedError(f"{cls.__name__}.{defined[0]}: batch transfer hooks are the module's here, not "
                                   f"the data module's; move {', '.join(defined)} to your TrainingModule.")

    @classmethod
    def from_datasets(cls, train_dataset: Any = None, val_dataset: Any = None, test_dataset: Any = None,
                      predict_dataset: Any = None, batch_size: int = 1, num_workers: int = 0) -> DataModule:
        """A data module serving these datasets, as Lightning's ``LightningDataModule.from_datasets``.

        The training loader shuffles, the others do not; a dataset left out
        gives no dataloader for its stage.
        """
        from torch.utils.data import DataLoader

        datamodule = cls()
        for stage, dataset, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                        ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if dataset is not None:
                setattr(datamodule, f"{stage}_dataloader", _loader_factory(dataset, batch_size, shuffle, num_workers,
                                                                           DataLoader))
        return datamodule

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint: a dict of numbers, strings, lists, dicts and tensors (empty by default)."""
        return {}

    @noop_hook  # marked, so a resume can tell a data module that keeps state from one that keeps none
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned, when ``fit`` resumes from a checkpoint."""


#: Lightning lets a data module define these; here only the module does (refused at class definition).
_MODULE_ONLY_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def _loader_factory(dataset: Any, batch_size: int, shuffle: bool, num_workers: int, loader_class: type) -> Any:
    def dataloader() -> Any:
        return loader_class(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)
    return dataloader
