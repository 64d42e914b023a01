"""Distillation stage: models, data, losses, training and evaluation (needs PyTorch: the train extra)."""
import importlib.util
import sys

__version__ = "0.1.0"


def need_torch(extra: str, caller: str) -> None:
    """Stop a command of the ``extra`` extra when PyTorch is missing (a runtime-only install), naming
    the pip command that adds it. Called at the top of the command's module, before it imports
    torch. ``caller`` is the module's ``__name__``: run as a command (``__main__``) it exits with one
    ``error:`` line (status 2); imported, it raises ModuleNotFoundError with the same advice."""
    if _importable("torch"):
        return
    message = (f"PyTorch is not installed: this needs the {extra} extra: pip install 'tiny-denoise[{extra}]' "
               f"(in a checkout: pip install -e '.[{extra}]')")  # fmt: skip
    if caller == "__main__":
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ModuleNotFoundError(message, name="torch")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses the module
        return False
