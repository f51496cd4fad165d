"""Lightning's README "hello world": LitAutoEncoder (MNIST 28x28 -> digits 8x8)."""

import torch
from _digits import digits
from torch import nn, optim
from torch.utils.data import DataLoader

import lightning as L


class LitAutoEncoder(L.LightningModule):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def training_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = nn.functional.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return optim.Adam(self.parameters(), lr=1e-3)


def run(root):
    L.seed_everything(0)
    encoder = nn.Sequential(nn.Linear(8 * 8, 64), nn.ReLU(), nn.Linear(64, 3))
    decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 8 * 8))
    autoencoder = LitAutoEncoder(encoder, decoder)
    train_loader = DataLoader(digits(), batch_size=64, shuffle=True)
    trainer = L.Trainer(limit_train_batches=20, max_epochs=2, default_root_dir=root, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model=autoencoder, train_dataloaders=train_loader)
    return {"model": autoencoder, "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "global_step": trainer.global_step}
