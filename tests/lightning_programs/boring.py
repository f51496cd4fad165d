"""Lightning's BoringModel and BoringDataModule (lightning.pytorch.demos.boring_classes), as bug reports use them."""

from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities.types import STEP_OUTPUT


class RandomDataset(Dataset):
    def __init__(self, size: int, length: int):
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]

    def __len__(self) -> int:
        return self.len


class BoringModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def loss(self, preds: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            labels = torch.ones_like(preds)
        return torch.nn.functional.mse_loss(preds, labels)

    def step(self, batch: Any) -> Tensor:
        output = self(batch)
        return self.loss(output)

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"loss": self.step(batch)}

    def validation_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"x": self.step(batch)}

    def test_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"y": self.step(batch)}

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        return [optimizer], [lr_scheduler]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))


class BoringDataModule(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.random_full = RandomDataset(32, 64 * 4)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.random_train = Subset(self.random_full, indices=range(64))
        if stage in ("fit", "validate"):
            self.random_val = Subset(self.random_full, indices=range(64, 64 * 2))
        if stage == "test":
            self.random_test = Subset(self.random_full, indices=range(64 * 2, 64 * 3))
        if stage == "predict":
            self.random_predict = Subset(self.random_full, indices=range(64 * 3, 64 * 4))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict)


def run(root):
    """The bug-report template: fit, validate, test, predict; then the same with the data module."""
    seed_everything(0)
    model = BoringModel()
    trainer = Trainer(default_root_dir=root, limit_train_batches=5, limit_val_batches=3, limit_test_batches=3,
                      limit_predict_batches=3, num_sanity_val_steps=2, max_epochs=2, enable_model_summary=False,
                      enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model)
    validated = trainer.validate(model)
    tested = trainer.test(model)
    predicted = trainer.predict(model)
    with_datamodule = BoringModel()
    trainer = Trainer(default_root_dir=root, max_epochs=1, enable_model_summary=False, enable_progress_bar=False,
                      logger=False, enable_checkpointing=False)
    trainer.fit(with_datamodule, datamodule=BoringDataModule())
    return {"model": model, "datamodule_model": with_datamodule, "validated": validated, "tested": tested,
            "predictions": torch.cat(predicted), "global_step": trainer.global_step}
