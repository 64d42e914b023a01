# Two entry points: `make demo` (stream the shipped noisy sample through the default bundle) and
# `make test`. Each has its own virtual environment, created on first use and updated when
# pyproject.toml or the pins change: the demo's (.venv-runtime) holds only the streaming runtime
# (the runtime extra: ONNX Runtime, LiteRT, sounddevice; no torch), the tests' (.venv) every extra.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
RUNTIME_VENV ?= .venv-runtime
PY := $(VENV)/bin/python
EXTRAS ?= train,export,runtime,bench,peers,dev

.PHONY: demo test install portaudio clean

# $(call install_env,ENV,EXTRAS): an editable install of .[EXTRAS] into the environment ENV. pip
# writes to ENV/pip.log; when it fails, the end of that log (which requirement, and why) is shown.
define install_env
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	@echo "pip install -c constraints.txt -e '.[$(2)]' into $(1) (log: $(1)/pip.log)"
	@$(1)/bin/python -m pip install --progress-bar off -c constraints.txt -e '.[$(2)]' > $(1)/pip.log 2>&1 || \
	{ tail -n 30 $(1)/pip.log; echo "error: pip could not install .[$(2)] into $(1) (full log: $(1)/pip.log)"; exit 1; }
	touch $(1)/.installed
endef

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(call install_env,$(VENV),$(EXTRAS))

$(RUNTIME_VENV)/.installed: pyproject.toml constraints.txt
	$(call install_env,$(RUNTIME_VENV),runtime)

demo: $(RUNTIME_VENV)/.installed
	mkdir -p out
	$(RUNTIME_VENV)/bin/python -m runtime.stream --input assets/sample/noisy.wav --output out/enhanced.wav --report out/report.json

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
	rm -rf $(VENV) $(RUNTIME_VENV) out .pytest_cache
