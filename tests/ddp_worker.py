"""Run under torchrun by tests/test_engine.py: trains the smoke preset, saves each rank's weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from finessl.config import apply_overrides, load_preset
from finessl.run import train


def main() -> None:
    out = Path(sys.argv[1])
    config = apply_overrides(load_preset("smoke"), {
        "train.steps": "4", "train.steps_per_epoch": "2", "train.batch_size": "4",
        "train.tensorboard": "false"})
    import finessl.run as run_module

    captured = {}
    original = run_module.Trainer.fit

    def fit(self):
        result = original(self)
        captured["state"] = self.model.trainable_state_dict()
        return result

    run_module.Trainer.fit = fit
    train(config, out, callbacks=[])
    rank = dist.get_rank()
    torch.save({k: v.cpu() for k, v in captured["state"].items()}, out / f"rank{rank}.pt")
    dist.barrier()


if __name__ == "__main__":
    main()
