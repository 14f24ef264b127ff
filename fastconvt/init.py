"""Initialisations for transposed-convolution kernels, in the style of
:mod:`torch.nn.init`: each fills a ``ConvTranspose2d`` weight of shape
``(C_in, C_out // groups, kH, kW)`` in place (without recording gradients) and
returns it."""
import math

import torch

from .sizes import _pair


def checkerboard_free_(weight, stride, generator=None):
    r"""Initialise ``weight`` so that the layer starts out as nearest-neighbour
    up-sampling followed by a convolution, which paints no checkerboard.

    Nearest-neighbour up-sampling by :math:`s` followed by a convolution with a
    kernel :math:`v` of size :math:`(kH - sH + 1, kW - sW + 1)` is the transposed
    convolution (stride :math:`s`) whose kernel is :math:`v` fully convolved with
    an :math:`(sH, sW)` box of ones. This draws :math:`v` as torch initialises a
    ``ConvTranspose2d`` weight of its shape (``kaiming_uniform_(a=sqrt(5))``) and
    sets ``weight`` to that kernel. The taps of every output phase then have the
    same sum (that of :math:`v`), so a constant input gives a flat output away from
    the borders.

    Precisely, with :math:`m = kH - sH + 1` (likewise along W) and the layer's
    padding :math:`p`, ``conv_transpose2d(x, weight, stride=s, padding=p)``
    equals ``conv2d(interpolate(x, scale_factor=s), v', padding=m - 1 - p)``
    (cropped by :math:`p - m + 1` where that is positive), :math:`v'` being
    :math:`v` flipped along H and W, with ``C_in`` and ``C_out // groups``
    swapped per group.

    Args:
        weight: a tensor of shape :math:`(C_{in}, C_{out} / \text{groups}, kH, kW)`,
            the kernel of a layer with dilation 1.
        stride: the layer's stride, an int or a pair of ints; at most the kernel size.
        generator: the :class:`torch.Generator` to draw :math:`v` from. Default: None

    Returns:
        ``weight``.

    Examples::

        >>> m = fastconvt.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
        >>> _ = fastconvt.init.checkerboard_free_(m.weight, m.stride)
    """
    stride, _ = _pair("checkerboard_free_", "stride", stride)
    _check_weight("checkerboard_free_", weight)
    kernel = tuple(weight.shape[2:])
    if min(stride) <= 0 or any(k < s for k, s in zip(kernel, stride)):
        raise ValueError(f"checkerboard_free_(): the kernel size must be at least the stride "
                         f"(and the stride positive), but got kernel size {kernel} and stride "
                         f"{stride}")
    (sh, sw), (mh, mw) = stride, (kernel[0] - stride[0] + 1, kernel[1] - stride[1] + 1)
    with torch.no_grad():
        v = torch.empty(weight.shape[:2] + (mh, mw), dtype=weight.dtype, device=weight.device)
        torch.nn.init.kaiming_uniform_(v, a=math.sqrt(5), generator=generator)
        weight.zero_()
        for a in range(sh):
            for b in range(sw):
                weight[..., a:a + mh, b:b + mw] += v
    return weight


def bilinear_(weight):
    r"""Initialise ``weight`` to bilinear up-sampling, as FCN does (Long et al.,
    "Fully Convolutional Networks for Semantic Segmentation", 2015).

    Along each axis of kernel size :math:`k`, with factor :math:`f = \lfloor (k + 1)
    / 2 \rfloor` and centre :math:`c = f - 1` (:math:`k` odd) or :math:`f - 1/2`
    (:math:`k` even), tap :math:`i` is :math:`1 - |i - c| / f`; the kernel is the
    outer product of the two axes' taps. With ``kernel_size = 2 f - f % 2``,
    ``stride = f`` and ``padding = ceil((f - 1) / 2)`` the layer equals
    ``interpolate(x, scale_factor=f, mode='bilinear', align_corners=False)`` away
    from the borders.

    Args:
        weight: a tensor of shape :math:`(C_{in}, C_{out} / \text{groups}, kH, kW)`,
            with :math:`C_{out} / \text{groups} = 1` (each channel up-sampled on its
            own: a depthwise layer, ``groups = C_in``) or :math:`C_{in} = C_{out}`
            (``groups = 1``: channel :math:`c` up-sampled into channel :math:`c`,
            the kernel between different channels zero).

    Returns:
        ``weight``.

    Examples::

        >>> m = fastconvt.ConvTranspose2d(3, 3, kernel_size=4, stride=2, padding=1, bias=False)
        >>> _ = fastconvt.init.bilinear_(m.weight)
    """
    _check_weight("bilinear_", weight)
    c_in, c_out = weight.shape[:2]
    if c_out != 1 and c_in != c_out:
        raise ValueError(f"bilinear_(): expected a weight of shape (C, 1, kH, kW) or "
                         f"(C, C, kH, kW), but got {tuple(weight.shape)}")
    rows, cols = (_bilinear_taps(k, weight.dtype, weight.device) for k in weight.shape[2:])
    kernel = rows[:, None] * cols[None, :]
    with torch.no_grad():
        if c_out == 1:
            weight.copy_(kernel.expand_as(weight))
        else:
            weight.zero_()
            weight[range(c_in), range(c_in)] = kernel
    return weight


def _bilinear_taps(k, dtype, device):
    f = (k + 1) // 2
    center = f - 1 if k % 2 else f - 0.5
    i = torch.arange(k, dtype=torch.float64)
    return (1 - (i - center).abs() / f).to(dtype=dtype, device=device)


def _check_weight(function, weight):
    if weight.dim() != 4:
        raise ValueError(f"{function}(): expected a 4-D weight (C_in, C_out // groups, kH, kW), "
                         f"but got one of shape {tuple(weight.shape)}")
