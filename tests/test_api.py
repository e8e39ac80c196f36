"""The Python API with the user's own backbone, data and transforms (not images, not CLIP)."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import finessl


class Vectors(Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), np.asarray(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def jitter(scale):
    return lambda v: v + scale * torch.randn_like(v)


def digits_source():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return finessl.SourceData(classes=[str(k) for k in range(10)], train=Vectors(x[:1500], y[:1500]),
                              train_targets=y[:1500], test=Vectors(x[1500:], y[1500:]))


def test_train_with_own_backbone_and_data(tmp_path):
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    transforms = finessl.Transforms(weak=jitter(0.05), strong=jitter(0.3), test=lambda v: v)
    config = finessl.load_preset("smoke")
    config.model.peft = "full"
    # From a random-init backbone, FineSSL's gamma = 3 lets early (random) pseudo-labels
    # take over; a pretrained backbone does not need this.
    config.algorithm.unlabeled_weight = 1.0
    config.data.labels_per_class = 10
    config.train.steps, config.train.steps_per_epoch, config.train.batch_size = 120, 30, 16
    final = finessl.train(config, tmp_path / "run", backbone=backbone,
                          source=digits_source(), transforms=transforms)
    assert final["steps"] == 120
    assert final["top1"] > 60  # 10 classes; chance is 10
    run = finessl.load(tmp_path / "run", backbone=backbone)
    assert run.classes[3] == "3" and run.model.num_classes == 10
