"""Paper-scale speed on one GPU: the CIFAR-100 N4 recipe's shapes, timed.

ViT-B/16 + VPT-deep (50 prompts), batch 32 labeled + 32 unlabeled x 3 views = 128 images
per step, random weights and synthetic 100-class data (no download), fp16 with loss
scaling. Variants: PIL augmentation in data workers, ``data.gpu_augment``, and
``gpu_augment`` + ``train.compile``. Prints a markdown table: images/s, seconds per
500-step epoch, projected minutes for the 15,000-step recipe, peak GPU memory.

    python benchmarks/gpu_check.py --steps 200            # on a GPU machine
    python benchmarks/gpu_check.py --smoke                # CPU, tiny model: the test suite's check

``benchmarks/gpu_check.sh`` runs this together with the CUDA tests and a torchrun run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

VARIANTS = {
    "fp16, PIL augmentation": {},
    "fp16, gpu_augment": {"data.gpu_augment": "true"},
    "fp16, gpu_augment + compile": {"data.gpu_augment": "true", "train.compile": "true"},
}
PAPER_SHAPES = {
    "model.pretrained": "none", "data.name": "synthetic", "data.num_classes": "100",
    "data.synthetic_size": "50000", "data.synthetic_test_size": "100",
    "data.num_workers": str(min(12, os.cpu_count() or 1)), "train.precision": "fp16",
}
SMOKE_SHAPES = {
    "model.backbone": "tiny-vit", "model.pretrained": "none", "model.vpt_tokens": "4",
    "model.image_size": "32", "data.name": "synthetic", "data.num_classes": "10",
    "data.synthetic_size": "64", "data.num_workers": "0", "train.batch_size": "4",
    "train.precision": "fp32", "train.device": "cpu",
}


def measure(preset: str, shapes: dict, variant: dict, steps: int, warmup: int) -> dict:
    from finessl.config import apply_overrides, load_preset
    from finessl.engine.bench import bench

    config = apply_overrides(load_preset(preset), {**shapes, **variant})
    began = time.time()
    result = bench(config, steps=steps, warmup=warmup)
    result["wall_seconds"] = time.time() - began
    return result


def row(name: str, result: dict, recipe_steps: int, per_epoch: int) -> str:
    step = result["seconds_per_step"]
    return (f"| {name} | {result['images_per_second']:.0f} | {step:.3f} | {step * per_epoch:.0f} | "
            f"{step * recipe_steps / 60:.1f} | {result['peak_memory_mib'] / 1024:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="CPU and a tiny model (seconds)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    import torch

    shapes = SMOKE_SHAPES if args.smoke else PAPER_SHAPES
    variants = dict(VARIANTS)
    if args.smoke:  # compiling on a CPU takes minutes; the GPU run covers it
        variants.pop("fp16, gpu_augment + compile")
        variants = {name.replace("fp16", "fp32"): v for name, v in variants.items()}
    elif not torch.cuda.is_available():
        sys.exit("gpu_check.py needs CUDA (or --smoke)")
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results = {}
    for name, variant in variants.items():
        results[name] = measure("cifar100-n4", shapes, variant, args.steps, args.warmup)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    lines = [
        f"Device: {device}; torch {torch.__version__}; Python {platform.python_version()}; "
        f"{args.steps} timed steps after {args.warmup} warm-up steps.",
        "",
        "| variant | images/s | s/step | s per 500-step epoch | min for 15,000 steps | peak GPU memory GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ] + [row(name, result, 15000, 500) for name, result in results.items()]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
