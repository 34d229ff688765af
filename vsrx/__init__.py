"""vsrx: video super-resolution with EDVR-style models and the deformable-alignment family."""

__version__ = "0.1.0"

from vsrx.errors import InputError, ModelError, UsageError, VsrxError  # noqa: E402

__all__ = ["__version__", "VsrxError", "UsageError", "InputError", "ModelError", "load_model", "build_model", "save_model"]


def __getattr__(name: str):
    # The model API imports torch; keep `import vsrx` (and `vsrx --help`) light until it is used.
    if name in ("load_model", "build_model", "save_model"):
        import vsrx.models

        return getattr(vsrx.models, name)
    raise AttributeError(f"module 'vsrx' has no attribute {name!r}")
