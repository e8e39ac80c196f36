"""Our FineSSL training step against one built the way the reference code builds it.

Reference-style ("naive"): the labeled, weak and both strong views forwarded together
with gradients, attention as explicit ``q @ k^T -> softmax -> @ v``, fp32.
Ours: the weak view without gradients, fused ``scaled_dot_product_attention``, and
optionally bf16 autocast on the CPU, and (``--compile``) the model under ``torch.compile``
as ``train.compile true`` runs it. Same model (CLIP ViT-B/16 with QuickGELU, as the
reference builds it, + VPT-deep, random weights), same batch, same losses; one process,
interleaved repetitions.

    .venv/bin/python benchmarks/step_speed.py [--batch-size 4] [--steps 3] [--compile] [--out docs/x.md]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import torch
import torch.nn.functional as F

from finessl.algorithms import Batch, build_algorithm
from finessl.algorithms.components import (
    balanced_margins,
    margin_cross_entropy,
    masked_mean,
    smoothed_targets,
    soft_cross_entropy,
)
from finessl.config import AlgorithmConfig, ModelConfig
from finessl.models import build_model
from finessl.models import vit as vit_module

FUSED_ATTENTION = vit_module.attention


def explicit_attention(qkv: torch.Tensor, parts) -> torch.Tensor:
    """Attention as the reference computes it: materialised scores and softmax."""
    batch, length, triple = qkv.shape
    width = triple // 3
    heads = parts.num_heads
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, length, width)


def naive_step(model, algorithm, batch: Batch) -> torch.Tensor:
    """FineSSL's loss with all four views in one forward with gradients (reference style)."""
    cfg = algorithm.config
    margins = balanced_margins(algorithm.pace.refresh(), cfg.options("margins").alpha)
    n = batch.images.shape[0]
    logits, aux = model(torch.cat([batch.images, batch.weak, *batch.strong]), aux=True)
    lx, lw, ls = logits[:n], logits[n:2 * n], logits[2 * n:]
    ax, aw, as_ = aux[:n], aux[n:2 * n], aux[2 * n:]
    confidence, pseudo = lw.detach().softmax(-1).max(-1)
    aux_conf = aw.detach().softmax(-1).max(-1).values
    selected = confidence >= cfg.threshold
    loss_x = margin_cross_entropy(lx, batch.labels, margins).mean()
    loss_x_aux = F.cross_entropy(ax, batch.labels)
    loss_u = (aux_conf.repeat(2) * margin_cross_entropy(ls, pseudo.repeat(2), margins)).mean()
    soft = smoothed_targets(pseudo, algorithm.num_classes, cfg.options("aux_head").smoothing).repeat(2, 1)
    loss_u_aux = masked_mean(soft_cross_entropy(as_, soft), selected.repeat(2))
    algorithm.pace.update(batch.unlabeled_index, pseudo, selected)
    return loss_x + loss_x_aux + 3.0 * loss_u + loss_u_aux


def make_batch(batch_size: int, size: int) -> Batch:
    def images():
        return torch.randn(batch_size, 3, size, size)

    return Batch(images(), torch.randint(0, 100, (batch_size,)),
                 torch.randint(0, 1000, (batch_size,)), images(), [images(), images()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=args.backbone, pretrained=None, peft="vpt-deep",
                                    image_size=args.image_size, quick_gelu=True),
                        num_classes=100).train()
    model.backbone.text = None
    algorithm = build_algorithm(AlgorithmConfig(name="finessl"), 100, 1000)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03,
                                momentum=0.9)
    batch = make_batch(args.batch_size, args.image_size)
    compiled = torch.compile(model) if args.compile else None

    def run(kind: str) -> None:
        vit_module.attention = explicit_attention if kind == "naive" else FUSED_ATTENTION
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in kind
               else contextlib.nullcontext())
        net = compiled if kind.endswith("compiled") else model
        optimizer.zero_grad(set_to_none=True)
        with ctx:
            loss = naive_step(model, algorithm, batch) if kind == "naive" else \
                algorithm.step(net, batch).loss
        loss.backward()
        optimizer.step()

    kinds = ["naive", "ours-fp32", "ours-bf16"]
    if args.compile:
        kinds += ["ours-fp32-compiled", "ours-bf16-compiled"]
    times = {k: [] for k in kinds}
    for kind in kinds:  # warm-up
        run(kind)
    for _ in range(args.rounds):
        for kind in kinds:
            began = time.perf_counter()
            for _ in range(args.steps):
                run(kind)
            times[kind].append((time.perf_counter() - began) / args.steps)
    vit_module.attention = FUSED_ATTENTION

    best = {k: min(v) for k, v in times.items()}
    images = args.batch_size * 4
    lines = [
        f"{args.backbone} + VPT-deep at {args.image_size} px, random weights; batch "
        f"{args.batch_size} labeled + {args.batch_size} unlabeled (weak + 2 strong) = {images} "
        f"images per step; best of {args.rounds} rounds x {args.steps} steps. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "",
        "| step | s / step | images / s | speed-up vs reference-style |",
        "|---|---:|---:|---:|",
    ]
    labels = {"naive": "reference-style (4 views with grad, explicit attention, fp32)",
              "ours-fp32": "ours, fp32 (weak view without grad, fused attention)",
              "ours-bf16": "ours, bf16 autocast on CPU",
              "ours-fp32-compiled": "ours, fp32, torch.compile",
              "ours-bf16-compiled": "ours, bf16 autocast, torch.compile"}
    for kind in kinds:
        lines.append(f"| {labels[kind]} | {best[kind]:.2f} | {images / best[kind]:.2f} | "
                     f"{best['naive'] / best[kind]:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table)


if __name__ == "__main__":
    main()
