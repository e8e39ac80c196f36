"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    top1 = float(re.search(r"top-1 ([\d.]+)%", out).group(1))
    assert top1 > 60
    assert (tmp_path / "runs" / "digits" / "adapter.safetensors").is_file()


def test_layout_lists_every_module():
    layout = README.read_text().split("## Layout", 1)[1]
    package = README.parent / "src" / "finessl"
    for path in package.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        assert path.name in layout, f"README Layout does not mention {path.relative_to(package)}"


def test_nothing_refers_outside_the_repository():
    root, marker = README.parent, "shared" + chr(47)  # the folder beside the repository
    for folder in ("src", "tests", "benchmarks", "docs"):
        for path in (root / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".sh"):
                assert marker not in path.read_text(errors="ignore"), path
    assert marker not in README.read_text()
