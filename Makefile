# One place for set-up, so the README's commands, CI and developers agree.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install browser demo test lint lock

# Every install resolves exactly the versions in constraints.txt (the lock; refresh it with 'make lock'), and
# check_lock.py fails naming any package that differs. torch is pinned exactly: 2.13.0 is the CPU wheel already
# on disk; a looser pin pulls GBs of CUDA packages.
# lpips, torch-fidelity and open_clip_torch are only the references for the tests of our LPIPS, Inception-v3 (FID)
# and HPSv2.1 (open_clip ViT-H-14 -> transformers CLIPModel) ports: --no-deps, since their torchvision dependency is
# a CUDA build that cannot import next to the CPU torch (and would break transformers' imports); the tests import
# open_clip against a stand-in torchvision and ftfy.
install:
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q -c constraints.txt --no-deps lpips
	$(PIP) install -q -c constraints.txt --no-deps torch-fidelity
	$(PIP) install -q -c constraints.txt --no-deps open_clip_torch
	$(PYTHON) scripts/check_lock.py

# Rebuild the lock from a clean install in a throwaway venv (see scripts/refresh_lock.sh).
lock:
	scripts/refresh_lock.sh

# The main job: a quick hidden-layer sweep with metrics (tiny model unless a checkpoint is configured); it ends
# with a metrics table per layer and where the results are. Re-running resumes (nothing is redone).
demo: install
	llm-dit sweep hidden_layer --quick --set width=256 --set height=256 --output-dir outputs/results --compute-metrics

# The viewer's end-to-end tests drive Debian's chromium through Playwright (no browser download: there is no
# internet for it). Installing it needs root, as on CI; elsewhere install the 'chromium' package yourself.
browser:
	@test -x /usr/bin/chromium || { apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium fonts-dejavu-core >/dev/null; }; }
	@/usr/bin/chromium --version

# The suite sees no plugin from the machine's Python (a preinstalled pytest-benchmark or the like cannot change it;
# no test needs one) and a UTF-8 locale; tests/conftest.py pins the terminal size for the tests and their children.
# Then the numerics- and width-sensitive tests (markers numerics, terminal) run again with 2 intra-op threads and
# a 40-column terminal, so a result that depends on the thread count or the width fails here, not on a user's
# machine (tests/README.md). OMP_WAIT_POLICY=PASSIVE changes no result: idle OpenMP threads sleep instead of
# spinning, which on a busy 2-core machine measured 16 s instead of 82 s for tests/test_encoder.py.
TEST_ENV = PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 LC_ALL=C.UTF-8 LANG=C.UTF-8

test: install browser
	$(PYTHON) -m ruff check src tests benchmarks scripts
	$(TEST_ENV) $(PYTHON) -m pytest
	$(TEST_ENV) OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE COLUMNS=40 LLM_DIT_TEST_COLUMNS=40 $(PYTHON) -m pytest -m "numerics or terminal"

lint:
	$(PYTHON) -m ruff check src tests benchmarks scripts
