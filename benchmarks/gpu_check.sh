#!/usr/bin/env bash
# The GPU check, for the first session that has a device (about 6-8 minutes on one H100):
#   1. the test suite's CUDA-marked tests,
#   2. the CIFAR-100 N4 recipe's shapes timed in fp16 with and without data.gpu_augment and
#      train.compile (benchmarks/gpu_check.py),
#   3. a torchrun --nproc_per_node 1 run over NCCL,
# and prints the markdown table for docs/performance.md.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # CPU, tiny model: what the test suite runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
SMOKE=${GPU_CHECK_SMOKE:-0}

if [ "$SMOKE" = 1 ]; then
  STEPS=3; WARMUP=1; BENCH_FLAGS=(--smoke)
  RUN_FLAGS=(--preset smoke --train.steps 4 --train.steps_per_epoch 2 --train.tensorboard false)
else
  STEPS=${GPU_CHECK_STEPS:-200}; WARMUP=20; BENCH_FLAGS=()
  RUN_FLAGS=(--preset cifar100-n4 --model.pretrained none --data.name synthetic
             --data.num_classes 100 --data.synthetic_size 50000 --data.num_workers 12
             --train.steps 100 --train.steps_per_epoch 100 --train.tensorboard false)
fi

echo "== 1. CUDA tests" >&2
if [ "$SMOKE" = 1 ]; then
  "$PY" -m pytest -q -p no:cacheprovider tests/test_scale.py -k cuda >&2 || exit 1
else
  "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_scale.py tests/test_gpu_augment.py >&2
fi

echo "== 2. the recipe's shapes, timed" >&2
"$PY" benchmarks/gpu_check.py "${BENCH_FLAGS[@]}" --steps "$STEPS" --warmup "$WARMUP" \
  --json "$OUT/bench.json" > "$OUT/table.md"

echo "== 3. torchrun, one process" >&2
"$PY" -m torch.distributed.run --nproc_per_node 1 -m finessl train "${RUN_FLAGS[@]}" \
  --output "$OUT/torchrun" >&2
"$PY" - "$OUT" <<'EOF' >> "$OUT/table.md"
import json, sys
final = json.load(open(f"{sys.argv[1]}/torchrun/final.json"))
print(f"\ntorchrun --nproc_per_node 1: {final['steps']} steps in {final['seconds']:.1f} s "
      f"on {final['device']} ({final['precision']}), world size {final['world_size']}.")
EOF
cat "$OUT/table.md"
