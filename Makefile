# Two commands: `make demo` and `make test`. Each bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# torch/torchvision are pinned to the builds that lie on disk here, so pip never downloads GBs.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo data venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS) -e '.[dev]'
	touch $(STAMP)

data:
	@test -d $(FMNIST) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }

test: venv data
	$(BIN)/python -m pytest -n 2 --dist load -q

demo: venv data
	$(BIN)/python -m visattn.demo

clean:
	rm -rf $(VENV) lightning_logs outputs .pytest_cache
