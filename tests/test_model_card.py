"""The model card every finished run gets: valid Hugging Face front matter and the run's
own numbers, an audit's findings when there is one, and a user's README left alone."""

import json

import yaml

import finessl
from finessl.cli import main
from finessl.eval.model_card import front_matter, write_model_card
from finessl.eval.summary import summarise_run
from finessl.rundir import RunDir


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_a_finished_run_has_a_card_with_its_numbers(tmp_path, capsys):
    run = tmp_path / "run"
    final = finessl.train("smoke", run, callbacks=[])
    meta, body = split_card((run / RunDir.CARD).read_text())
    assert meta["library_name"] == "finessl" and meta["pipeline_tag"] == "image-classification"
    assert {"peft-vpt-deep", "algorithm-finessl"} <= set(meta["tags"])
    assert meta["datasets"] == ["synthetic"] and "base_model" not in meta  # not a Hub id
    assert f"| {final['top1']:.2f} % | {final['balanced_acc']:.2f} % | {final['ece']:.2f} |" in body
    worst = min(final["per_class_acc"], key=final["per_class_acc"].get)
    assert f"{worst} ({final['per_class_acc'][worst]:.2f} %)" in body
    assert f"{final['num_labeled']} / {final['num_unlabeled']} / {final['num_test']}" in body
    assert f"({final['estimate_method']}, on {final['estimate_pool']} pool images)" in body
    assert "## Pseudo-labels" in body and f"finessl train --config {run / 'config.yaml'}" in body
    assert "## Data audit" not in body
    # an audit of the run, then `finessl report`: the card shows its findings
    (run / "audit").mkdir()
    (run / "audit" / "audit.json").write_text(json.dumps({
        "ood_fraction": 0.125, "duplicates": [[1, 2], [3, 4, 5]], "test_leaks": [[7, 8]],
        "label_suspects": [1, 2, 3]}))
    assert main(["report", "--run", str(run)]) == 0
    _, body = split_card((run / RunDir.CARD).read_text())
    assert "out-of-distribution share of the pool: 12.50 %" in body
    assert "near-duplicate groups: 2; test-set copies in training: 1" in body
    assert "seed labels that look wrong: 3" in body


def test_a_readme_of_your_own_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    finessl.train("smoke", run, callbacks=[])
    (run / RunDir.CARD).write_text("my notes\n")
    assert write_model_card(run) is None and (run / RunDir.CARD).read_text() == "my notes\n"


def test_a_hub_backbone_is_the_base_model(tmp_path):
    run = tmp_path / "run"
    finessl.train("smoke", run, callbacks=[])
    summary = summarise_run(run)
    summary.context["backbone"] = "hf-hub:timm/vit_base_patch16_clip_224.openai"
    assert front_matter(summary)["base_model"] == "timm/vit_base_patch16_clip_224.openai"
