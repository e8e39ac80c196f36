"""Trainable parameters, peak memory and CPU time of one FineSSL training step per PEFT method.

CLIP ViT-B/16 at 224 px with random weights (the architecture is what matters for cost).
Each method runs in its own process so peak memory (max RSS) is its own.

    .venv/bin/python benchmarks/peft_methods.py [--batch-size 2] [--steps 3] [--out docs/peft.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

METHODS = ["linear", "vpt-shallow", "vpt-deep", "vpt-last", "lora", "adapter", "adaptformer",
           "ssf", "bitfit", "full", "lora+vpt-deep"]


def measure(method: str, batch_size: int, steps: int, backbone: str, image_size: int) -> dict:
    import torch

    from finessl.algorithms import Batch, build_algorithm
    from finessl.config import AlgorithmConfig, ModelConfig
    from finessl.models import build_model

    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, pretrained=None, peft=method, image_size=image_size)
    model = build_model(config, num_classes=100).train()
    model.backbone.text = None  # the text tower plays no part in training
    algorithm = build_algorithm(AlgorithmConfig(name="finessl"), 100, 1000)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.03, momentum=0.9)

    def images():
        return torch.randn(batch_size, 3, image_size, image_size)

    def step():
        batch = Batch(images(), torch.randint(0, 100, (batch_size,)),
                      torch.randint(0, 1000, (batch_size,)), images(), [images(), images()])
        optimizer.zero_grad(set_to_none=True)
        algorithm.step(model, batch).loss.backward()
        optimizer.step()

    step()  # warm-up
    began = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    cpu = (time.process_time() - began[0]) / steps
    wall = (time.perf_counter() - began[1]) / steps
    backbone_params = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    return {
        "method": method,
        "trainable_backbone": backbone_params,
        "trainable_total": sum(p.numel() for p in params),
        "cpu_s_per_step": round(cpu, 3),
        "wall_s_per_step": round(wall, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="markdown file to write the table to")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size, args.steps, args.backbone,
                                 args.image_size)))
        return
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--one", method, "--backbone", args.backbone,
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    table = format_table(rows, args)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table)


def format_table(rows: list[dict], args) -> str:
    lines = [
        f"Backbone {args.backbone} at {args.image_size} px, random weights; one FineSSL step = "
        f"{args.batch_size} labeled + {args.batch_size} unlabeled images (weak + 2 strong views), "
        f"SGD; mean of {args.steps} steps after one warm-up. Machine: {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, torch CPU threads "
        f"= {_threads()}.",
        "",
        "| method | trainable backbone params | trainable incl. heads | CPU s / step "
        "| wall s / step | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_backbone']:,} | {r['trainable_total']:,} | "
                     f"{r['cpu_s_per_step']:.2f} | {r['wall_s_per_step']:.2f} | {r['peak_rss_mib']:,.0f} |")
    return "\n".join(lines) + "\n"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
