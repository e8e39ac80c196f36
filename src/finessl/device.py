"""Where training runs and in which precision: one place for the device decisions."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import torch

from finessl.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` = CUDA if present, then Apple's MPS, else the CPU; ``cuda`` takes the local
    rank's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda, cuda:N "
                          "or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device {name!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not mps_available():
        raise ConfigError("train.device is 'mps' but Apple's MPS backend is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device {name!r} is not supported; use auto, cpu, cuda or mps")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX-512 BF16 / AMX, or the
    AVX-512 kernels oneDNN uses). Without them (AVX2 only) PyTorch falls back to a reference
    GEMM that is tens of times slower than fp32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` = fp16 (with loss scaling) on CUDA, fp32 elsewhere. ``bf16`` on a CPU that
    cannot run it fast falls back to fp32, with a warning."""
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of auto, {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs CUDA; use train.precision bf16 on the CPU")
    if name == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("train.precision bf16: this CPU (%s) has no fast bf16 matrix products, so bf16 "
                    "would run many times slower than fp32; using fp32",
                    torch.backends.cpu.get_cpu_capability())
        return "fp32"
    return name


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


# glibc's mallopt parameter, and the size from which a freed buffer goes back to the OS.
M_MMAP_THRESHOLD = -3
FREED_TO_OS_ABOVE = 4 << 20


def return_large_frees_to_the_os(threshold: int = FREED_TO_OS_ABOVE) -> bool:
    """Makes glibc hand every buffer of ``threshold`` bytes or more straight back to the OS
    when it is freed. By default glibc raises that threshold to the largest buffer freed so
    far (up to 32 MiB) and serves such buffers from its heap, where the holes of a command
    that allocates blocks of ever-different sizes (one per shard, per cluster) are seldom
    reused: TypiClust over a million images peaked ~390 MiB higher (docs/performance.md).
    A fixed threshold turns that off; the whole-pool commands call this, training does not
    (its buffers repeat in size, and the heap serves them faster). Returns whether it
    applied: False off glibc (macOS, musl), where nothing changes."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
