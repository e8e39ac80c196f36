"""``finessl push`` and ``--run hf-hub:USER/NAME``, against a local stand-in for the Hub
(``huggingface_hub``'s ``HfApi.create_repo`` / ``upload_folder`` and ``snapshot_download``
replaced by copies between folders: nothing touches the network)."""

import csv
import fnmatch
import shutil

import huggingface_hub
import pytest
import yaml

import finessl
from finessl.cli import main
from finessl.errors import FinesslError
from finessl.hub import UPLOADED, local_run, repo_of

from helpers import write_image


class LocalHub:
    """Repositories as folders under ``root``."""

    def __init__(self, root, monkeypatch):
        self.root, self.created = root, {}
        hub = self

        def create_repo(api, repo_id, private=False, exist_ok=False, repo_type="model"):
            (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
            hub.created[repo_id] = private

        def upload_folder(api, repo_id, folder_path, allow_patterns=None, **kwargs):
            for path in sorted(__import__("pathlib").Path(folder_path).iterdir()):
                if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                    shutil.copy(path, hub.root / repo_id / path.name)

        def snapshot_download(repo_id, local_dir, allow_patterns=None, **kwargs):
            source = hub.root / repo_id
            if not source.is_dir():
                raise huggingface_hub.errors.LocalEntryNotFoundError(
                    f"Cannot find the requested files for {repo_id} in the local cache")
            __import__("pathlib").Path(local_dir).mkdir(parents=True, exist_ok=True)
            for path in source.iterdir():
                if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                    shutil.copy(path, f"{local_dir}/{path.name}")
            return local_dir

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("FINESSL_CACHE", str(tmp_path / "cache"))
    return LocalHub(tmp_path / "hub", monkeypatch)


def test_push_then_predict_from_the_hub_gives_the_same_predictions(hub, tmp_path, capsys):
    run = tmp_path / "run"
    finessl.train("smoke", run, callbacks=[])
    assert main(["push", "--run", str(run), "--repo", "someone/bees", "--private"]) == 0
    assert "hf-hub:someone/bees" in capsys.readouterr().out and hub.created == {"someone/bees": True}
    pushed = sorted(p.name for p in (hub.root / "someone" / "bees").iterdir())
    assert pushed == sorted(UPLOADED)
    card = (hub.root / "someone" / "bees" / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["library_name"] == "finessl"
    images = tmp_path / "images"
    for i in range(4):
        write_image(images / f"{i}.png", i % 2, seed=i)
    here, there = tmp_path / "local.csv", tmp_path / "hub.csv"
    assert main(["predict", "--run", str(run), str(images), "--top-k", "2", "--out", str(here)]) == 0
    assert main(["predict", "--run", "hf-hub:someone/bees", str(images), "--top-k", "2",
                 "--out", str(there)]) == 0
    assert list(csv.reader(there.open())) == list(csv.reader(here.open()))
    # a warm start from the Hub run
    out = tmp_path / "warm"
    assert main(["train", "--preset", "smoke", "--init-from", "hf://someone/bees", "--output", str(out),
                 "--train.steps", "2"]) == 0


def test_a_repository_the_hub_does_not_have_is_one_clear_line(hub, tmp_path, capsys):
    image = write_image(tmp_path / "a.png", 0, seed=0)
    assert main(["predict", "--run", "hf-hub:someone/missing", str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download the run hf-hub:someone/missing" in err
    with pytest.raises(FinesslError, match="USER/NAME"):
        repo_of("hf-hub:just-a-name")
    assert local_run(tmp_path) == tmp_path  # a folder is itself


def test_only_a_finished_run_is_pushed(hub, tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FinesslError, match="not a finished run"):
        from finessl.hub import push

        push(tmp_path / "half", "someone/half")
