# Two commands: `make demo` and `make test`. Each bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# torch/torchvision are pinned to the builds that lie on disk here, so pip never downloads GBs.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: test demo data venv clean gpu-bundle

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
	$(BIN)/visattn demo

# benchmarks/gpu.sh on a bare GPU image (Python 3.12): the wheels it lacks, pycocoevalcap's BLEU and CIDEr
# scorers (its wheel's Java tools make it 104 MB, past what the device tool carries) and the Fashion-MNIST test files.
GPU_WHEELS := albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 simsimd==6.5.16 stringzilla==5.3.2 pycocotools==2.0.11
SCORERS := pycocoevalcap==1.2
GPU_PLATFORMS := $(foreach tag,manylinux_2_28 manylinux_2_17 manylinux2014,--platform $(tag)_x86_64)

gpu-bundle: venv data
	mkdir -p .gpu/fashion-mnist
	cp $(FMNIST)/t10k-* .gpu/fashion-mnist/
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .gpu/wheels $(GPU_WHEELS)
	$(BIN)/pip download --quiet --no-deps -d .gpu/scorers $(SCORERS)
	$(BIN)/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall('.gpu/site', [n for n in \
		zipfile.ZipFile(sys.argv[1]).namelist() if n.split('/')[1] in ('__init__.py', 'bleu', 'cider')])" .gpu/scorers/*.whl
	rm -rf .gpu/scorers

clean:
	rm -rf $(VENV) lightning_logs outputs .pytest_cache
