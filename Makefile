# The two commands: `make test` and `make demo`. Each builds .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch==2.13.0 first: on these machines it is a local CPU build; an open range could pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: test demo install clean quality style speed sweep

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: quality
	$(PY) -m pytest -q tests

# One style for the whole tree (ruff.toml), as peft's `make quality` / `make style`.
quality: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

style: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: $(STAMP)
	$(PY) -m perft_peft.demo

clean:
	rm -rf $(VENV) build *.egg-info demo_output

# The benchmarks (docs/benchmarks.md): results go to benchmarks/results/.
speed: $(STAMP)
	$(PY) benchmarks/speed.py

sweep: $(STAMP)
	$(PY) benchmarks/paper_sweep.py
