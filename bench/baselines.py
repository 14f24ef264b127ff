"""torch's side of the benchmark and the modules both sides run: for a padding mode torch
lacks, torch's best equivalent (:class:`TorchCircularConvTranspose2d`, which
``test_layers.test_circular_baseline`` checks against the adjoint of
``nn.Conv2d(padding_mode="circular")``)."""
import torch
import torch.nn.functional as F

import fastconvt

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _bands(pad, size):
    """(rows of the padded axis, rows of the output they add onto) for a circular fold
    of ``pad`` rows on each side onto ``size`` rows: the middle, the top, the bottom."""
    return [(slice(pad, pad + size), slice(0, size)), (slice(0, pad), slice(size - pad, size)),
            (slice(pad + size, None), slice(0, pad))]


class _CircularFold(torch.autograd.Function):
    """(N, C, H + 2 pH, W + 2 pW) -> (N, C, H, W): out[..., i, j] sums z[..., i', j'] over
    i' - pH = i (mod H) and j' - pW = j (mod W), plus the bias once. Forward: the middle
    plus the bias in one pass, then the eight border strips
    added in place. Backward: its adjoint, torch's circular pad of the gradient (autograd
    through in-place slice adds would copy the whole gradient once per strip)."""

    @staticmethod
    def forward(ctx, z, bias, padding):
        pad_h, pad_w = padding
        ctx.padding = padding
        height, width = z.shape[-2] - 2 * pad_h, z.shape[-1] - 2 * pad_w
        middle = z[..., pad_h:pad_h + height, pad_w:pad_w + width]
        out = middle.clone() if bias is None else middle + bias.view(-1, 1, 1)
        for i, (z_rows, rows) in enumerate(_bands(pad_h, height)):
            for j, (z_cols, cols) in enumerate(_bands(pad_w, width)):
                if i or j:
                    out[..., rows, cols] += z[..., z_rows, z_cols]
        return out

    @staticmethod
    def backward(ctx, grad):
        pad_h, pad_w = ctx.padding
        grad_z = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_z = F.pad(grad, (pad_w, pad_w, pad_h, pad_h), mode="circular")
        if ctx.needs_input_grad[1]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_z, grad_bias, None


class TorchCircularConvTranspose2d(torch.nn.ConvTranspose2d):
    """torch's best equivalent of a circular ConvTranspose2d (which torch rejects): the
    zeros-mode transposed convolution with ``padding=0`` (an output 2 x padding larger),
    then the border rows and columns folded back circularly, and the bias added once.
    Same parameters and initialisation as ``nn.ConvTranspose2d``; batched input; each
    padding at most the output's size."""

    def __init__(self, *args, padding_mode="circular", **kwargs):
        super().__init__(*args, padding_mode="zeros", **kwargs)
        self.padding_mode = padding_mode

    def forward(self, input):
        z = F.conv_transpose2d(input, self.weight, None, self.stride, 0, self.output_padding,
                               self.groups, self.dilation)
        return _CircularFold.apply(z, self.bias, self.padding)


def _torch_module(padding_mode="zeros", **kwargs):
    """torch's ConvTranspose2d, or its best equivalent for a padding mode it lacks."""
    if padding_mode == "circular":
        return TorchCircularConvTranspose2d(padding_mode=padding_mode, **kwargs)
    return torch.nn.ConvTranspose2d(padding_mode=padding_mode, **kwargs)


IMPLS = {"torch": _torch_module, "fastconvt": fastconvt.ConvTranspose2d}


def make_module(impl, spec, dtype=torch.float32, **overrides):
    """``impl``'s module ("torch" or "fastconvt") for layer ``spec``: ConvTranspose1d for a
    1-D layer, else ConvTranspose2d (torch's best equivalent for a padding mode it lacks)."""
    args = dict(spec.conv_args(), **overrides)
    if spec.dim == 1:
        cls = torch.nn.ConvTranspose1d if impl == "torch" else fastconvt.ConvTranspose1d
        return cls(**args, dtype=dtype)
    return IMPLS[impl](**args, dtype=dtype)
