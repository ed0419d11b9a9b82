# Two commands matter to a newcomer: `make demo` and `make test`. Everything installs into .venv/.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

# torch is pinned to the CPU build that ships on these machines; a bare `torch` would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[text,image,embedded,test,train]"
	touch $(STAMP)

demo: install
	$(BIN)/python examples/text_search/demo.py

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_stream.py

clean:
	rm -rf .modelstream examples/**/.modelstream
