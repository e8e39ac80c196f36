"""Where the time of a FineSSL step goes on the CPU, and of data loading.

1. One training step at the CIFAR-100 N4 recipe's shapes (ViT-B/16 with QuickGELU,
   VPT-deep 50 tokens, 224 px, batch ``--batch-size`` labeled + as many unlabeled x
   (weak + 2 strong); the recipe is 32), fp32 and bf16 autocast, under ``torch.profiler``:
   the operators taking the most CPU time.
2. Data loading for the same step: the PIL path (decode -> weak + 2 strong reference
   views per image, in one process) against ``data.gpu_augment``'s batched ops on CPU
   tensors; per batch, and projected to a 500-step epoch.

    .venv/bin/python benchmarks/profile_step.py --batch-size 4 --out docs/profile.md
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from PIL import Image

from finessl.algorithms import Batch, build_algorithm
from finessl.config import AlgorithmConfig, make_section
from finessl.data.augment import build_transforms
from finessl.data.gpu_augment import BatchAugment
from finessl.models import build_model


def make_batch(batch_size: int, size: int) -> Batch:
    def images():
        return torch.randn(batch_size, 3, size, size)

    return Batch(images(), torch.randint(0, 100, (batch_size,)), torch.arange(batch_size),
                 images(), [images(), images()])


def profile_step(batch_size: int, precision: str, rows: int) -> tuple[float, str]:
    torch.manual_seed(0)
    config = make_section("model", backbone="ViT-B-16", pretrained="none", peft="vpt-deep", vpt_tokens=50,
                          image_size=224, quick_gelu=True)
    model = build_model(config, num_classes=100).train()
    algorithm = build_algorithm(AlgorithmConfig(name="finessl"), 100, 1000)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03)
    batch = make_batch(batch_size, 224)

    def step():
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else \
            torch.autocast("cpu", enabled=False)
        with context:
            loss = algorithm.step(model, batch).loss
        loss.backward()
        optimizer.step()

    step()  # warm-up
    began = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    seconds = time.perf_counter() - began
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows,
                                      max_name_column_width=40)
    return seconds, table


def data_loading(batch_size: int, batches: int) -> dict[str, float]:
    """Seconds per batch of labeled (1 view) + unlabeled (weak + 2 strong) images."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(256)]
    transforms = build_transforms(224, (0.5,) * 3, (0.5,) * 3)
    began = time.perf_counter()
    for b in range(batches):
        for i in range(batch_size):
            image = images[(b * batch_size + i) % len(images)]
            transforms.weak(image)  # labeled
            transforms.weak(image), transforms.strong(image), transforms.strong(image)
    pil = (time.perf_counter() - began) / batches
    raw = torch.from_numpy(np.stack([np.asarray(i) for i in images[:batch_size]])).permute(0, 3, 1, 2)
    weak = BatchAugment(224, (0.5,) * 3, (0.5,) * 3, strong=False)
    strong = BatchAugment(224, (0.5,) * 3, (0.5,) * 3, strong=True)
    generator = torch.Generator().manual_seed(0)
    began = time.perf_counter()
    for _ in range(batches):
        weak(raw, generator), weak(raw, generator)
        strong(raw, generator), strong(raw, generator)
    batched = (time.perf_counter() - began) / batches
    return {"pil": pil, "batched": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--data-batches", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    lines = [f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch "
             f"{torch.__version__}; batch {args.batch_size} labeled + {args.batch_size} unlabeled "
             "x (weak + 2 strong) at 224 px.", ""]
    for precision in ("fp32", "bf16"):
        seconds, table = profile_step(args.batch_size, precision, args.rows)
        lines += [f"### One FineSSL step, {precision}: {seconds:.2f} s (profiled)", "", "```",
                  table.rstrip(), "```", ""]
    loading = data_loading(args.batch_size, args.data_batches)
    per_epoch = {k: v * 500 * 32 / args.batch_size for k, v in loading.items()}
    lines += [
        "### Data loading for one step (one process)", "",
        "| path | s per batch | s per 500-step epoch at batch 32 (projected) |", "|---|---:|---:|",
        f"| PIL: decode, weak + 2 strong reference views per image | {loading['pil']:.3f} | "
        f"{per_epoch['pil']:.0f} |",
        f"| data.gpu_augment ops on CPU tensors | {loading['batched']:.3f} | "
        f"{per_epoch['batched']:.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
