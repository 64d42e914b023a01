"""What an install gets: the commands of a runtime-only install, the pins, the Makefile's two
environments, and the licence files."""
import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# A fresh interpreter where importing torch fails, as in an install of the runtime extra alone.
NO_TORCH = (
    "import runpy, sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'torch':\n"
    "            raise ImportError('blocked: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _without_torch(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, extra", [
    ("distill.train", "train"),
    ("distill.enhance", "train"),
    ("distill.evaluate", "train"),
    ("distill.checkpoint", "train"),
    ("export", "export"),
])  # fmt: skip
def test_commands_without_torch_name_the_extra_to_install(module, extra, tmp_path):
    run = _without_torch(f"sys.argv = ['{module}', '--help']\nrunpy.run_module('{module}', run_name='__main__', alter_sys=True)\n", tmp_path)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert err[0].startswith("error: PyTorch is not installed") and f"pip install 'tiny-denoise[{extra}]'" in err[0]


def test_importing_without_torch_raises_with_the_same_advice(tmp_path):
    run = _without_torch("try:\n    import distill.train\nexcept ModuleNotFoundError as e:\n    print(e.name, e)\n", tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("torch PyTorch is not installed") and "tiny-denoise[train]" in run.stdout


def test_the_dev_set_renderer_needs_no_torch(tmp_path):
    run = _without_torch("sys.argv = ['distill.devset', '--help']\nrunpy.run_module('distill.devset', run_name='__main__', alter_sys=True)\n", tmp_path)
    assert run.returncode == 0 and "render" in run.stdout


def test_pins_are_on_pypi_and_within_the_requirements():
    """A pin with a local label (torch==2.13.0+cpu) exists only on PyTorch's own index: pip that
    sees only PyPI cannot resolve it."""
    pins = [Requirement(line.split("#")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines() if line.split("#")[0].strip()]
    assert pins
    extras = [Requirement(r) for deps in PYPROJECT["project"]["optional-dependencies"].values() for r in deps]
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==" and "+" not in spec.version, f"{pin}: pin a release PyPI has, without a local label"
        assert any(r.name == pin.name for r in extras), f"{pin.name} is pinned but no extra needs it"
        for r in extras:
            if r.name == pin.name:
                assert r.specifier.contains(spec.version), f"{pin} is outside {r}"
    assert "torch" in [p.name for p in pins], "without a pin pip picks the newest torch"


def _make(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60, **kwargs)


def _installed_extras(dry_run: str) -> list[set[str]]:
    return [set(m.split(",")) for m in re.findall(r"-m pip install .*-e '\.\[([^]]*)\]'", dry_run)]


def test_demo_installs_the_runtime_alone_and_test_everything():
    demo = _make("-n", "-B", "demo").stdout
    assert _installed_extras(demo) == [{"runtime"}], demo
    runtime = [Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]["runtime"]] + PYPROJECT["project"]["dependencies"]
    assert not any(name.startswith(("torch", "onnx ", "onnxscript", "litert-torch", "ai-edge-quantizer", "tensorflow")) for name in runtime), runtime
    stream = [line for line in demo.splitlines() if "-m runtime.stream" in line]
    assert stream and stream[0].startswith(".venv-runtime/bin/python"), "the demo runs in the environment it installed"
    test = _make("-n", "-B", "test").stdout
    assert _installed_extras(test) == [set(PYPROJECT["project"]["optional-dependencies"])], test


def test_a_failing_install_shows_pips_error(tmp_path):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    fake = env / "bin" / "python"  # the venv's python, as pip fails to resolve: which requirement is said at INFO level
    fake.write_text("#!/bin/sh\n" + "echo 'Collecting something'\n" * 50
                    + "case \" $* \" in *' --quiet '*|*' -q '*) ;; *) echo 'The conflict is caused by: the user requested torch==0.0.1+cpu';; esac\n"
                    + "echo 'ERROR: ResolutionImpossible' >&2\nexit 1\n")  # fmt: skip
    fake.chmod(0o755)
    run = _make("install", f"VENV={env}")
    said = run.stdout + run.stderr
    assert run.returncode != 0 and not (env / ".installed").exists()
    assert "ERROR: ResolutionImpossible" in said and "The conflict is caused by: the user requested torch==0.0.1+cpu" in said
    assert f"full log: {env}/pip.log" in said


APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"  # apache.org/licenses/LICENSE-2.0.txt


def test_licence_files_ship_with_the_package():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    files = PYPROJECT["project"]["license-files"]
    assert {"LICENSE", "NOTICE"} <= set(files) and all((ROOT / f).is_file() for f in files)
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256, "LICENSE must be the Apache-2.0 text, unchanged"
    notice = (ROOT / "NOTICE").read_text()
    # the corpora the shipped weights were trained on (assets/checkpoints/MODEL_CARD.md) and their terms
    for name in ("LibriSpeech", "AISHELL-1", "VCTK", "CMU ARCTIC", "UrbanSound8K", "Speech Commands", "CC BY-NC 3.0", "NON-COMMERCIAL USE ONLY"):
        assert name in notice, name
