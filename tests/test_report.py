"""`finessl report`: valid PNGs and a self-contained HTML page a real browser renders."""

import re
import shutil
import subprocess
import sys

import pytest

import finessl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["accuracy.png", "pseudo_labels.png", "reliability.png", "confusion.png", "per_class.png"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    finessl.train("smoke", run, callbacks=[])
    result = subprocess.run([sys.executable, "-m", "finessl", "report", "--run", str(run)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run / "report"


def test_report_writes_pngs_and_html(report):
    for name in PLOTS:
        data = (report / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
    page = (report / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    for title in ("Accuracy over training", "Pseudo-label class distribution",
                  "Reliability diagram", "Confusion matrix", "Per-class accuracy"):
        assert title in page
    assert "top1" in page and "algorithm: finessl" not in page  # numbers table, escaped config
    assert "name: finessl" in page


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", (report / "index.html").as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = re.search(r'data-plots-loaded="([^"]+)"', result.stdout)
    assert loaded and loaded.group(1) == str(len(PLOTS)), result.stdout[-500:]
    assert "Uncaught" not in result.stderr
