"""Runs on the Hugging Face Hub: ``finessl push``, and ``hf-hub:USER/NAME`` as a run.

``push`` uploads what rebuilds and describes a finished run — ``adapter.safetensors``
(PEFT weights, both heads, the class names and base model in its metadata),
``config.yaml``, ``final.json``, ``metrics.jsonl`` and the model card ``README.md`` — to a
model repository, through ``huggingface_hub``. Wherever a run directory is read for
inference or a warm start, ``hf-hub:USER/NAME`` (or ``hf://USER/NAME``) downloads those
files once into ``~/.cache/finessl/hub`` (``FINESSL_CACHE`` moves it) and reads them from
there; offline, a repository not downloaded before is one clear error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from finessl.errors import FinesslError
from finessl.rundir import RunDir

log = logging.getLogger(__name__)

PREFIXES = ("hf-hub:", "hf://")
UPLOADED = (RunDir.ADAPTER, RunDir.CONFIG, RunDir.FINAL, RunDir.METRICS, RunDir.CARD)


def repo_of(name: str | os.PathLike) -> str | None:
    """``USER/NAME`` of a Hub reference, None for a local path."""
    text = str(name)
    for prefix in PREFIXES:
        if text.startswith(prefix):
            repo = text[len(prefix):].strip("/")
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise FinesslError(f"{text}: a Hub run is {prefix}USER/NAME")
            return repo
    return None


def cache_folder(repo: str) -> Path:
    root = Path(os.environ.get("FINESSL_CACHE", "~/.cache/finessl")).expanduser()
    return root / "hub" / repo.replace("/", "--")


def local_run(name: str | os.PathLike) -> Path:
    """The run directory ``name`` names: the folder itself, or a Hub repository's files
    downloaded into the cache (a copy from an earlier download is used when offline)."""
    repo = repo_of(name)
    if repo is None:
        return Path(name)
    import huggingface_hub

    target = cache_folder(repo)
    try:
        huggingface_hub.snapshot_download(repo_id=repo, local_dir=str(target),
                                          allow_patterns=list(UPLOADED))
    except Exception as error:  # noqa: BLE001  (the Hub's errors: offline, missing, no access)
        if (target / RunDir.ADAPTER).is_file() and (target / RunDir.CONFIG).is_file():
            log.warning("could not reach the Hub for %s (%s); using the copy in %s", repo,
                        type(error).__name__, target)
            return target
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise FinesslError(f"cannot download the run {name} from the Hugging Face Hub ({first}); "
                           "check the name and your access, or the network (HF_HUB_OFFLINE)") from None
    if not (target / RunDir.ADAPTER).is_file():
        raise FinesslError(f"{name} holds no {RunDir.ADAPTER}: not a run pushed by finessl push")
    return target


def push(run_dir: str | Path, repo: str, private: bool = False, token: str | None = None) -> str:
    """Uploads a finished run to the model repository ``repo`` (created if needed); returns
    its address."""
    import huggingface_hub

    from finessl.eval.model_card import write_model_card

    run = RunDir(run_dir)
    if repo_of(f"hf-hub:{repo}") is None:
        raise FinesslError("--repo is USER/NAME")
    missing = [name for name in (RunDir.ADAPTER, RunDir.CONFIG, RunDir.FINAL) if not (run / name).is_file()]
    if missing:
        raise FinesslError(f"{run.path} is not a finished run (no {', '.join(missing)}); push it "
                           "once training has finished")
    write_model_card(run.path)
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id=repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=str(run.path), repo_type="model",
                          allow_patterns=[name for name in UPLOADED if (run / name).is_file()],
                          commit_message=f"finessl push {run.path.name}")
    except Exception as error:  # noqa: BLE001
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise FinesslError(f"could not push to the Hugging Face Hub repository {repo} ({first}); "
                           "log in with `hf auth login` or pass --token") from None
    return f"https://huggingface.co/{repo}"
