"""fastconvt: a drop-in, Numba-computed replacement for torch.nn.ConvTranspose2d (and
ConvTranspose1d) on the CPU."""
from . import init, kernels
from ._dispatch import set_autotune, use_family
from .conv1d import ConvTranspose1d, conv_transpose1d
from .functional import conv_transpose2d, select_family, select_plan
from .modules import ConvTranspose2d, convert, unconvert
from .sizes import checkerboard, output_padding_for, output_size

__version__ = "0.1.0"
__all__ = ["ConvTranspose1d", "ConvTranspose2d", "conv_transpose1d", "conv_transpose2d",
           "convert", "select_family", "select_plan", "set_autotune", "use_family", "warmup",
           "kernels", "init", "checkerboard", "output_padding_for", "output_size",
           "unconvert"]


def warmup():
    """Compile (or load from Numba's on-disk cache) the float32 and float64 kernels
    now rather than on first use: about 40 s the first time, under one once cached.
    Complex kernels still compile on first use."""
    kernels.warmup()
