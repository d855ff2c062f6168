# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-slow test-all bench clean repro repro-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch from the pinned version first, so the package's torch range is already met
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[render,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/iscene-datagen --procedural --procedural-n 24 --n 6 --views-per-scene 2 --resolution 256 --samples 16 --out $(DEMO_OUT) --name demo
	$(BIN)/iscene-datagen verify $(DEMO_OUT)
	$(BIN)/iscene-datagen preview $(DEMO_OUT) --out $(DEMO_OUT)/preview.png
	@echo "demo dataset in $(DEMO_OUT)/, contact sheet in $(DEMO_OUT)/preview.png"

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -m "slow" -q

test-all: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

# The paper's component ablation at nano scale, end to end on a CPU (docs/STUDIES.md); rerun to resume.
repro: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/iscene-sweep studies/ablation-nano.yaml --out studies/ablation-nano

# The same chain with every cell shrunk to a few scenes and steps (minutes): checks it runs.
repro-smoke: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/iscene-sweep studies/ablation-nano.yaml --out studies/ablation-nano-smoke --smoke

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
