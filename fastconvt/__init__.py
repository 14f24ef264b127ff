"""fastconvt: a drop-in, Numba-computed replacement for torch.nn.ConvTranspose2d (and
ConvTranspose1d) on the CPU.

The names below load on first use (PEP 562), so ``import fastconvt`` and the size
arithmetic (``python -m fastconvt size``) need neither torch nor Numba."""
import importlib
import os

__version__ = "0.1.0"

# Whether this process was forked after fastconvt was imported. The kernels load on
# first use, perhaps only in a forked child (a DataLoader worker), which must still
# know it is one: kernels._config reads this flag when it loads.
_forked = False


def _note_fork():
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)

# public name -> the submodule that defines it (None: the name is the submodule)
_EXPORTS = {
    "ConvTranspose1d": "conv1d", "conv_transpose1d": "conv1d",
    "ConvTranspose2d": "modules", "convert": "modules", "unconvert": "modules",
    "conv_transpose2d": "functional", "select_family": "functional",
    "select_plan": "functional",
    "set_autotune": "_dispatch", "use_family": "_dispatch",
    "checkerboard": "sizes", "output_padding_for": "sizes", "output_size": "sizes",
    "kernels": None, "init": None,
}
__all__ = sorted(_EXPORTS) + ["warmup"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastconvt' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name] or name}", __name__)
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def warmup():
    """Compile (or load from Numba's on-disk cache) the float32 and float64 kernels
    now rather than on first use: about a minute the first time, under a second once
    cached.
    Complex kernels still compile on first use."""
    from . import kernels

    kernels.warmup()
