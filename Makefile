# Two entry points: `make demo` (the offline FineSSL demo) and `make test`.
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the pair this project is tested with; a CUDA build
# on x86_64 Linux, so the same install runs on a GPU machine.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean

$(BIN)/finessl: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/finessl

install: $(BIN)/finessl

demo: install
	$(BIN)/finessl demo --output runs/demo

test: install
	$(BIN)/python -m finessl.data.fetch data
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
