"""Peak memory of a training step with and without activation checkpointing.

Each configuration runs in a fresh process: build ViT-B/16 (QuickGELU) with the PEFT
method, take two FineSSL training steps at 224 px (batch ``--batch-size`` labeled + as many
unlabeled x (weak + 2 strong)), and report the peak resident memory (CPU RSS; on a GPU the
same script reports ``torch.cuda.max_memory_allocated``) above what the built model held.

    .venv/bin/python benchmarks/memory.py --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from finessl.algorithms import Batch, build_algorithm
from finessl.config import AlgorithmConfig, make_section
from finessl.models import build_model

peft, checkpointing, batch_size, device = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
config = make_section("model", backbone="ViT-B-16", pretrained="none", peft=peft, image_size=224,
                      quick_gelu=True, grad_checkpointing=checkpointing)
model = build_model(config, num_classes=100).to(device).train()
model.backbone.text = None
algorithm = build_algorithm(AlgorithmConfig(name="finessl"), 100, 1000).to(device)
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
def images():
    return torch.randn(batch_size, 3, 224, 224, device=device)
batch = Batch(images(), torch.randint(0, 100, (batch_size,), device=device),
              torch.arange(batch_size, device=device), images(), [images(), images()])
if device == "cuda":
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
began = time.perf_counter()
for _ in range(2):
    optimizer.zero_grad(set_to_none=True)
    algorithm.step(model, batch).loss.backward()
    optimizer.step()
seconds = (time.perf_counter() - began) / 2
peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_mib": peak / 2**20, "above_model_mib": (peak - base) / 2**20,
                  "seconds_per_step": seconds,
                  "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=["full", "vpt-deep"])
    args = parser.parse_args()
    results = {}
    for method in args.methods:
        for checkpointing in ("0", "1"):
            out = subprocess.run([sys.executable, "-c", CHILD, method, checkpointing,
                                  str(args.batch_size), args.device],
                                 capture_output=True, text=True, check=True).stdout
            results[(method, checkpointing)] = json.loads(out.strip().splitlines()[-1])
            print(method, checkpointing, results[(method, checkpointing)], file=sys.stderr)
    unit = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    lines = [
        f"ViT-B/16 (QuickGELU) at 224 px, FineSSL step, batch {args.batch_size} labeled + "
        f"{args.batch_size} unlabeled x (weak + 2 strong), fp32, {args.device}; {unit}. "
        f"Machine: {platform.machine()}, Python {platform.python_version()}.",
        "",
        "| PEFT | trainable params | checkpointing | peak MiB | MiB above the built model | s / step |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for (method, checkpointing), r in results.items():
        lines.append(f"| {method} | {r['trainable']:,} | {'on' if checkpointing == '1' else 'off'} | "
                     f"{r['peak_mib']:.0f} | {r['above_model_mib']:.0f} | {r['seconds_per_step']:.1f} |")
    for method in args.methods:
        off, on = results[(method, "0")], results[(method, "1")]
        saved = 1 - on["above_model_mib"] / max(off["above_model_mib"], 1e-9)
        lines.append(f"\n{method}: checkpointing saves {saved:.0%} of the step's memory above the "
                     f"model, at {on['seconds_per_step'] / off['seconds_per_step']:.2f}x the time.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
