# Two commands on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch by default; override for CUDA, e.g. TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
# Test processes (pytest-xdist); each runs torch on 1 thread (tests/conftest.py). 2 fits the
# 2-core CI machine: the suite took 17 min 18 s in one process there, 8 min 54 s in two.
TEST_WORKERS ?= 2

.PHONY: run test lint docs test-slow test-cuda clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,export]"
	touch $@ $(VENV)/.run-installed

# The main job: train the default model (MNIST-1D CNN) on the bundled MNIST-1D data and
# compare its test accuracy with the paper's baselines. Extra options: make run ARGS="--epochs 5".
run: $(VENV)/.run-installed
	$(VENV)/bin/blockzoo train $(ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

# torch.compile with inductor over the whole registry (slow: not in CI).
test-slow: $(VENV)/.dev-installed
	BLOCKZOO_INDUCTOR_ALL=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_deploy.py -k inductor

# On a CUDA machine: the registry, training, DDP and benchmarks on the GPU (scripts/gpu_check.sh).
test-cuda: $(VENV)/.dev-installed
	bash scripts/gpu_check.sh

docs: $(VENV)/.dev-installed
	$(PY) scripts/update_docs.py --benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
