# Two entry points: `make demo` (enhance the shipped sample) and `make test`. Both create the
# virtual environment in .venv on first use and reinstall when pyproject.toml or the pins change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= train,export,runtime,dev

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

demo: install
	mkdir -p out
	$(PY) -m distill.enhance --input assets/sample/noisy.wav --output out/enhanced.wav

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
