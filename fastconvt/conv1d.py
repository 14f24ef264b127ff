"""``fastconvt.conv_transpose1d`` and ``fastconvt.ConvTranspose1d``: torch's 1-D layer
(the upsamplers of HiFi-GAN/MelGAN-style vocoders) as the 2-D layer on one-row images,
so the same kernels, plans, padding modes and transforms compute it."""
from typing import List, Optional

import torch
from torch import Tensor

from . import _same, _torch_path
from ._arguments import _check_types, _int
from .functional import conv_transpose2d
from .modules import KernelsLayer


def _single(name, value):
    """An int or a sequence of one int, as an int (torch's IntArrayRef[1])."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    values = tuple(_int(name, v, "tuple of ints") for v in values)
    if len(values) != 1:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of 1 values "
                           f"to match the convolution dimensions, but got {name}={list(values)}")
    return values[0]


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, *, padding_mode="zeros"):
    r"""Applies a 1-D transposed convolution: the signature and results of
    :func:`torch.nn.functional.conv_transpose1d`, plus ``padding_mode`` as in
    :func:`fastconvt.conv_transpose2d`.

    Args:
        input: :math:`(N, C_{in}, L_{in})` or :math:`(C_{in}, L_{in})`.
        weight: :math:`(C_{in}, C_{out} / \text{groups}, k)`.
        bias: optional :math:`(C_{out})`.
        stride, padding, output_padding, dilation: an int or a one-element tuple;
            ``padding`` also 'same' or 'valid' (see :func:`fastconvt.conv_transpose2d`).
        groups: as in torch. padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'``
            or ``'circular'`` (keyword only; the adjoint of ``nn.Conv1d`` in that mode).

    Output: :math:`L_{out} = (L_{in} - 1) \times \text{stride} - 2 \times \text{padding}
    + \text{dilation} \times (k - 1) + \text{output\_padding} + 1`.
    """
    string = isinstance(padding, str)  # 'same' or 'valid': also 'same' on the one row
    _check_types(stride, 0 if string else padding, output_padding, groups, dilation)
    if not isinstance(input, Tensor) or input.dim() not in (2, 3):
        shape = list(input.shape) if isinstance(input, Tensor) else input
        raise RuntimeError("Expected 2D (unbatched) or 3D (batched) input to conv_transpose1d, "
                           f"but got input of size: {shape}")
    if not isinstance(weight, Tensor) or weight.dim() != 3:
        raise RuntimeError("conv_transpose1d expects a 3-D weight (C_in, C_out // groups, k), "
                           f"but got weight of size {list(getattr(weight, 'shape', []))}")
    args = [_single(name, value) for name, value in (
        ("stride", stride), ("padding", 0 if string else padding),
        ("output_padding", output_padding), ("dilation", dilation))]
    (s, p, op, d), groups = args, _int("groups", groups)
    out = conv_transpose2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, s),
                           padding if string else (0, p), (0, op), groups, (1, d),
                           padding_mode=padding_mode)
    # a length-major input looks channels_last once unsqueezed; torch's 1-D output is
    # contiguous whatever the input's strides
    return out.squeeze(-2).contiguous()


class ConvTranspose1d(KernelsLayer, torch.nn.ConvTranspose1d):
    r"""Drop-in replacement for :class:`torch.nn.ConvTranspose1d` (a subclass that
    overrides :meth:`forward`, and the constructor only to accept the padding modes
    torch refuses; parameters, ``state_dict``, ``repr`` and argument checks are torch's).

    Examples::

        >>> m = fastconvt.ConvTranspose1d(256, 128, 16, stride=8, padding=4)
        >>> m(torch.randn(1, 256, 100)).shape
        torch.Size([1, 128, 800])
    """

    def _torch_forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if isinstance(self.padding, str):
            out_l = _torch_path.crop(self.padding, [input.size(-1)], [self.kernel_size[0]],
                                     [self.stride[0]], [self.dilation[0]])[2]
            _torch_path.check_string_output_size(self.padding, [input.size(-1)], out_l,
                                                 output_size, input.dim() - 1)
            return _torch_path.conv_transpose2d_string(
                input.unsqueeze(-2), self.weight.unsqueeze(-2), self.bias, [1, self.stride[0]],
                self.padding, self.groups, [1, self.dilation[0]], self.padding_mode).squeeze(-2)
        assert isinstance(self.padding, tuple)  # refines the type for TorchScript
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 1, self.dilation)
        return _torch_path.conv_transpose2d(
            input.unsqueeze(-2), self.weight.unsqueeze(-2), self.bias, [1, self.stride[0]],
            [0, self.padding[0]], [0, output_padding[0]], self.groups, [1, self.dilation[0]],
            self.padding_mode).squeeze(-2)

    @torch.jit.unused
    def _kernels_forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if isinstance(self.padding, str):
            _same.check_output_size(self, input, output_size)
            return conv_transpose1d(input, self.weight, self.bias, self.stride, self.padding, 0,
                                    self.groups, self.dilation, padding_mode=self.padding_mode)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 1, self.dilation)
        return conv_transpose1d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation,
                                padding_mode=self.padding_mode)
