# One place for set-up, so the README's commands, CI and developers agree.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test lint

# torch is pinned exactly: 2.13.0 is the CPU wheel already on disk; a looser pin pulls GBs of CUDA packages.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

demo: install
	llm-dit generate "A tabby cat sleeping on a sunlit windowsill" --output outputs/demo.png --overwrite

test: install
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests benchmarks
