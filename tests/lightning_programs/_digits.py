"""Digits (8x8, 10 classes, bundled with scikit-learn) in place of MNIST, which would need a download."""

import torch
from torch.utils.data import TensorDataset


def digits(images: bool = False) -> TensorDataset:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16
    return TensorDataset(x.view(-1, 1, 8, 8) if images else x, torch.tensor(y))
