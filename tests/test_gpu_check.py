"""benchmarks/gpu_check.sh in its CPU smoke mode, so the GPU check cannot rot unnoticed."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_gpu_check_smoke_mode_prints_the_table(tmp_path):
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "GPU_CHECK_OUT": str(tmp_path),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert "| variant | images/s |" in table
    rows = [line for line in table.splitlines() if line.startswith("| fp32")]
    assert len(rows) == 2  # PIL augmentation and gpu_augment
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0
    assert "torchrun --nproc_per_node 1: 4 steps" in table and "world size 1" in table
