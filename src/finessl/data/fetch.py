"""Getting Fashion-MNIST onto a fresh machine, offline where possible.

The demo and the tests use Fashion-MNIST. In order of preference: files already under
``data.root``; Debian's ``dataset-fashion-mnist`` package (installed here with apt-get when
this process may do so: apt-get exists and we are root); torchvision's download. If none
works, one error says both ways to get it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from finessl.errors import DataError

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def present(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in FILES)


def debian_present() -> bool:
    return all((DEBIAN_FASHION_MNIST / f"{name}.gz").is_file() for name in FILES)


def apt_install(package: str, run: Callable = subprocess.run) -> bool:
    """``apt-get install`` (after an ``update`` if the first try fails) when apt-get exists
    and this process is root; True when the package got installed."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False

    def apt(*args: str) -> bool:
        try:
            done = run(["apt-get", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=900)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    install = ("install", "-y", "-q", package)
    return apt(*install) or (apt("update", "-q") and apt(*install))


def torchvision_download(root: Path) -> bool:
    import torchvision

    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except (RuntimeError, OSError) as error:
        log.info("torchvision could not download Fashion-MNIST: %s", error)
        return False
    return True


def ensure_fashion_mnist(root: str | Path, *, install: Callable[[str], bool] | None = None,
                         download: Callable[[Path], bool] | None = None) -> str:
    """Makes Fashion-MNIST available under ``root`` (or from Debian's package); returns how:
    ``present``, ``debian``, ``apt``, ``download``."""
    root = Path(root)
    install, download = install or apt_install, download or torchvision_download
    if present(root):
        return "present"
    if debian_present():
        return "debian"
    log.info("Fashion-MNIST is not here; trying Debian's %s package", DEBIAN_PACKAGE)
    if install(DEBIAN_PACKAGE) and debian_present():
        return "apt"
    log.info("trying torchvision's download of Fashion-MNIST")
    if download(root):
        return "download"
    raise DataError(
        f"Fashion-MNIST is not in {str(root)!r} and could not be obtained: install Debian's "
        f"package (as root: apt-get install {DEBIAN_PACKAGE}) or run once with internet access "
        "(torchvision downloads it)")


if __name__ == "__main__":  # `python -m finessl.data.fetch [ROOT]`: what `make test` runs first
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(f"Fashion-MNIST: {ensure_fashion_mnist(sys.argv[1] if len(sys.argv) > 1 else 'data')}")
    except DataError as error:
        print(f"warning: {error}; the tests that need it are skipped")
