# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install cliplab with everything the tests need.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch 2.14.1 + torchvision 0.29.1: the pair OpenCLIP (a parity reference) needs; pip takes both from this disk.
	$(PYTHON) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cliplab demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_tokenizer.py
	$(PYTHON) benchmarks/bench_embed.py

clean:
	rm -rf $(VENV) out
