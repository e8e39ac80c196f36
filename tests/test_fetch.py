"""Getting Fashion-MNIST on a fresh machine: local files, Debian's package (installed with
apt-get when possible), torchvision's download, or one clear error. apt and the download are
mocked; the decisions are real."""

import subprocess
from types import SimpleNamespace

import pytest

from finessl.cli import main
from finessl.data import fetch
from finessl.errors import DataError


@pytest.fixture
def debian(tmp_path, monkeypatch):
    folder = tmp_path / "usr-share-datasets"
    monkeypatch.setattr(fetch, "DEBIAN_FASHION_MNIST", folder)
    return folder


def install_debian(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in fetch.FILES:
        (folder / f"{name}.gz").write_bytes(b"")


def never(*_):
    raise AssertionError("should not be called")


def test_files_already_there(tmp_path, debian):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in fetch.FILES:
        (raw / name).write_bytes(b"")
    assert fetch.ensure_fashion_mnist(tmp_path / "data", install=never, download=never) == "present"


def test_debian_package_already_installed(tmp_path, debian):
    install_debian(debian)
    assert fetch.ensure_fashion_mnist(tmp_path / "data", install=never, download=never) == "debian"


def test_installs_the_debian_package_first(tmp_path, debian):
    def install(package):
        assert package == "dataset-fashion-mnist"
        install_debian(debian)
        return True

    assert fetch.ensure_fashion_mnist(tmp_path / "data", install=install, download=never) == "apt"


def test_falls_back_to_the_download(tmp_path, debian):
    got = []
    assert fetch.ensure_fashion_mnist(tmp_path / "data", install=lambda p: False,
                                      download=lambda root: got.append(root) or True) == "download"
    assert got == [tmp_path / "data"]


def test_says_both_ways_when_nothing_works(tmp_path, debian):
    with pytest.raises(DataError) as error:
        fetch.ensure_fashion_mnist(tmp_path / "data", install=lambda p: False, download=lambda r: False)
    assert "apt-get install dataset-fashion-mnist" in str(error.value)
    assert "internet" in str(error.value)


def test_apt_install_only_as_root_with_apt(monkeypatch):
    calls = []

    def run(args, **kwargs):
        calls.append(args[1])
        return SimpleNamespace(returncode=0 if len(calls) > 1 else 100)  # the first install fails

    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    assert not fetch.apt_install("pkg", run=never)
    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(fetch.os, "geteuid", lambda: 1000)
    assert not fetch.apt_install("pkg", run=never)
    monkeypatch.setattr(fetch.os, "geteuid", lambda: 0)
    assert fetch.apt_install("pkg", run=run)
    assert calls == ["install", "update", "install"]  # update, then a second try

    def timeout(args, **kwargs):
        raise subprocess.TimeoutExpired(args, 900)

    assert not fetch.apt_install("pkg", run=timeout)


def test_demo_fetches_the_data_first_and_reports_failure_in_one_line(tmp_path, debian,
                                                                     monkeypatch, capsys):
    tried = []
    monkeypatch.setattr(fetch, "apt_install", lambda package: tried.append(package) or False)
    monkeypatch.setattr(fetch, "torchvision_download", lambda root: tried.append(root) or False)
    assert main(["demo", "--output", str(tmp_path / "demo"), "--data.root", str(tmp_path / "d")]) == 2
    assert tried == ["dataset-fashion-mnist", tmp_path / "d"]  # apt first, then the download
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not be obtained" in err[0] and "apt-get" in err[0]
    assert not (tmp_path / "demo").exists()
