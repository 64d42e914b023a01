# Two entry points: `make demo` (stream the shipped noisy sample through the default bundle) and
# `make test`. Both create the virtual environment in .venv on first use and reinstall when
# pyproject.toml or the pins change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= train,export,runtime,bench,peers,dev

.PHONY: demo test install portaudio clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

demo: install
	mkdir -p out
	$(PY) -m runtime.stream --input assets/sample/noisy.wav --output out/enhanced.wav --report out/report.json

# PortAudio (Debian's libportaudio2) for the live-audio path and its test; installed when missing
# and apt is usable, otherwise that one test is skipped with a note.
portaudio:
	@ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q libportaudio2 || { apt-get update -q && apt-get install -y -q libportaudio2; }; } ; } || \
	echo "note: libportaudio2 not installed (sudo apt install libportaudio2); the live-audio test will be skipped"

test: install portaudio
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
