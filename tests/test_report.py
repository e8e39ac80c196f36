"""`finessl report`: one run (4 and 100 classes) and a comparison, rendered by headless Chromium."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import finessl
from finessl.cli import main
from finessl.config import apply_overrides, load_preset
from finessl.eval.report import write_comparison, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def smoke(**overrides):
    return apply_overrides(load_preset("smoke"), {"train.tensorboard": "false", **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    finessl.train(smoke(), base / "finessl", callbacks=[])
    finessl.train(smoke(**{"algorithm.name": "fixmatch"}), base / "fixmatch", callbacks=[])
    hundred = smoke(**{"data.num_classes": "100", "data.synthetic_size": "400",
                       "data.synthetic_test_size": "300", "data.labels_per_class": "2",
                       "train.batch_size": "16", "train.steps": "4", "train.steps_per_epoch": "2",
                       "train.eval_batch_size": "100"})
    finessl.train(hundred, base / "hundred", callbacks=[])
    return base


def test_single_run_report(runs, finessl_cli):
    result = finessl_cli("report", "--run", runs / "finessl")
    assert result.returncode == 0, result.stderr
    report = runs / "finessl" / "report"
    for name in ("training.png", "pseudo_labels.png", "reliability.png", "confusion.png",
                 "per_class.png"):
        data = (report / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, name
    page = (report / "index.html").read_text()
    for text in ("Over training", "Pseudo-label class distribution", "Reliability diagram (ECE",
                 "most confused with", "labeled / unlabeled / test", "tiny-vit", "vpt-deep"):
        assert text in page, text
    assert page.count('<tr class="worst">') == 4  # every class of four is among the 10 worst
    assert "name: finessl" in page  # the configuration


def test_the_100_class_report_stays_readable(runs):
    page = write_report(runs / "hundred").read_text()
    rows = re.search(r'<table id="classes".*?</table>', page, flags=re.S).group(0)
    assert rows.count("<tr") == 101  # header + one row per class, with names
    assert "class_99" in rows
    assert page.count('<tr class="worst">') == 10
    assert "confusion.png" not in page and "Confusion matrix" not in page  # too many classes


def test_comparison(runs, tmp_path, capsys):
    assert main(["report", "--run", str(runs / "finessl"), "--run", str(runs / "fixmatch"), "--out",
                 str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "2 runs compared" in page and "fixmatch minus finessl, per class" in page
    final = re.search(r"<h2>Final numbers</h2><table.*?</table>", page, flags=re.S).group(0)
    assert final.count("<tr>") == 3  # header + two runs
    assert "class_3" in page
    with pytest.raises(Exception, match="at least two"):
        write_comparison([runs / "finessl"], tmp_path / "one")


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, *args):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_100_class_report_renders_in_headless_chromium(runs, tmp_path):
    from PIL import Image

    page = write_report(runs / "hundred")
    result = chromium(tmp_path, "--virtual-time-budget=8000", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    figures = len(re.findall(r"<figure>", dom))
    assert re.search(rf'data-plots-loaded="{figures}"', dom), dom[-500:]
    assert 'data-class-rows="100"' in dom
    assert 'data-js-errors="0"' in dom
    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text and plots, not a blank page


def test_an_unfinished_run_reports_its_last_evaluation(runs, tmp_path):
    copy = tmp_path / "unfinished"
    shutil.copytree(runs / "finessl", copy)
    (copy / "final.json").unlink()
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    started = [r for r in records if r["kind"] == "run"]
    assert started and started[0]["num_classes"] == 4 and started[0]["step"] == 0
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    page = write_report(copy).read_text()
    assert f"not finished: numbers of the last evaluation (step {last_eval['step']})" in page
    assert f"<td>top1</td><td>{last_eval['top1']:.4g}</td>" in page
