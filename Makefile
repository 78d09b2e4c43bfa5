# Every target sets up what it needs: the .venv (once), then the dataset (found, else installed or downloaded).
# OFFLINE=1 (here or in the environment): nothing from the network or the system; pip uses local wheels only.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NBVAL  := --nbval-lax --nbval-current-env --nbval-cell-timeout=900
# two workers share the cores; each notebook stays whole on one (see conftest.py)
XDIST  := -n 2

OFFLINE_ON := $(filter-out 0 false no off,$(OFFLINE))

.PHONY: setup data run lint test unit nbtest browser-test lab pretrained bench clean kit kit-test

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(OFFLINE_ON),--no-index) -r requirements.txt -e .
	@touch $(STAMP)

# Finds the dataset (data/, then Debian's package); else, on Debian/Ubuntu as root or with passwordless sudo,
# apt-get installs dataset-fashion-mnist; else torchvision downloads it into data/, checked against the SHA-256
# sums in data/README.md. Says which in one line. OFFLINE=1: only look. DOWNLOAD=1: skip apt-get.
data: $(STAMP)
	@$(PY) -m distill_utils data $(if $(OFFLINE_ON),--offline) $(if $(DOWNLOAD),--download)

# Notebooks 00-07 at workshop size into runs/<timestamp>/, then report.html there. PARAMS=params/full.yaml for full size.
run: data
	$(PY) -m distill_utils run $(if $(PARAMS),-f $(PARAMS))

# ruff: pycodestyle, pyflakes, import order, bugbear (rules in pyproject.toml); `ruff check --fix .` fixes most
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint data
	$(PY) -m pytest tests/ notebooks/ $(NBVAL) $(XDIST)

unit: $(STAMP)
	$(PY) -m pytest tests/ $(XDIST)

# Property-based fuzzing (Hypothesis) of every reader of untrusted input, 2,000 examples per reader (minutes);
# make test runs a few of each. A failure prints the input and how to replay it.
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_PROFILE=long $(PY) -m pytest tests/test_fuzz.py -q

nbtest: data
	$(PY) -m pytest notebooks/ $(NBVAL) $(XDIST)

# Notebook 02's explorer in JupyterLab + Debian's Chromium (apt-get install chromium), driven by Playwright.
browser-test: data
	$(PY) -m pytest tests/test_browser.py -v -s

# JupyterLab refuses root without --allow-root; containers and many workshop VMs run as root.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: data
	$(if $(LAB_ROOT),@echo "make lab: running as root: JupyterLab starts with --allow-root")
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_ROOT)

pretrained: data
	$(PY) -m distill_utils pretrained

# Full-size reference results (params/full.yaml, seeds 0 1 2; notebooks 03-06, 09 and 11) into data/reference/, then the README tables. Hours on a CPU; resumable.
.PHONY: reference
reference: data
	$(PY) -m distill_utils reference $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ONLY),--only $(ONLY))
	$(PY) -m distill_utils reference --readme

bench: data
	$(PY) bench/train_speed.py --model teacher_cnn
	$(PY) bench/train_speed.py --model student_cnn
	$(PY) bench/kd_speed.py
	$(PY) bench/precision_accuracy.py
	$(PY) bench/prune_speed.py
	$(PY) bench/deploy_speed.py

# A workshop kit for laptops with no internet (README "Running a workshop"): kit/ and kit-<platform>.tar.
# PLATFORMS="linux-x86_64 macos-arm64 windows-x86_64" (or all; default this machine's), PYTHON_VERSION=3.11,
# TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only torch on Linux (never required).
kit: data
	$(PY) -m distill_utils kit $(if $(PLATFORMS),--platform $(PLATFORMS)) \
	  $(if $(PYTHON_VERSION),--python $(PYTHON_VERSION)) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

# Builds a kit for this machine, installs it into a fresh venv with no package index, runs notebook 00 from it.
# About 11 minutes on 2 cores and 13 GB in its own temporary folder (other pytest runs clean only their own).
kit-test: data
	$(PY) -m pytest tests/test_kit.py -m kit -v -s -p no:cacheprovider --basetemp=$(or $(TMPDIR),/tmp)/distill-kit-test

clean:
	rm -rf runs/ .pytest_cache
