"""``fastconvt.ConvTranspose2d``: torch's module, computed by fastconvt's kernels."""
import warnings
from typing import List, Optional

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from . import _same, _torch_path, sizes
from .functional import check_padding_mode, conv_transpose2d


class KernelsLayer:
    """What fastconvt's layers add to torch's (a mixin before torch's class, adding no
    state): a constructor that also accepts the padding modes torch refuses, and a
    ``forward`` on fastconvt's kernels (``_kernels_forward``), or under TorchScript,
    which cannot call Numba, on torch's operators (``_torch_forward``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        check_padding_mode(padding_mode)
        string = isinstance(padding, str) and padding in _same.PADDINGS
        if string:  # (another string reaches torch's constructor and its TypeError)
            _same.check(padding, output_padding, ValueError)
        # torch's constructor accepts only 'zeros' and no 'same' or 'valid': build with
        # them, then set the mode and the string padding (stored as given)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         0 if string else padding, output_padding, groups, bias, dilation,
                         "zeros", device=device, dtype=dtype)
        self.padding_mode = padding_mode
        if string:
            self.padding = padding

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._torch_forward(input, output_size)
        return self._kernels_forward(input, output_size)


class ConvTranspose2d(KernelsLayer, torch.nn.ConvTranspose2d):
    r"""Drop-in replacement for :class:`torch.nn.ConvTranspose2d`.

    A subclass that overrides :meth:`forward`, and the constructor only to accept
    the padding modes torch refuses: otherwise constructor, parameters
    (``weight`` of shape :math:`(C_{in}, C_{out} / \text{groups}, kH, kW)`, ``bias`` of
    shape :math:`(C_{out})`, both initialised from
    :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, :math:`k = \text{groups} / (C_{out} kH kW)`),
    ``state_dict`` keys, ``extra_repr`` and argument checking are torch's own.

    Args:
        in_channels (int), out_channels (int), kernel_size (int or tuple),
        stride (int or tuple, default 1), padding (int or tuple, default 0),
        output_padding (int or tuple, default 0), groups (int, default 1),
        bias (bool, default True), dilation (int or tuple, default 1),
        padding_mode (str, default 'zeros'): 'zeros', 'reflect', 'replicate' or
            'circular'; see :func:`fastconvt.conv_transpose2d` (torch accepts only 'zeros'),
        device, dtype: exactly as in :class:`torch.nn.ConvTranspose2d`.

    Shape:
        - Input: :math:`(N, C_{in}, H_{in}, W_{in})` or :math:`(C_{in}, H_{in}, W_{in})`
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})`,
          :math:`H_{out} = (H_{in} - 1) \times \text{stride}[0] - 2 \times \text{padding}[0]
          + \text{dilation}[0] \times (\text{kernel\_size}[0] - 1)
          + \text{output\_padding}[0] + 1`, likewise :math:`W_{out}`.

    Differences from torch: none in results; see :func:`fastconvt.conv_transpose2d`
    for which inputs fastconvt's kernels compute. Beyond torch: the padding modes,
    and ``output_size`` values that need ``stride <= output_padding < dilation``
    (torch's ``forward`` rejects them although its layer computes them).

    Examples::

        >>> m = fastconvt.ConvTranspose2d(1, 3, kernel_size=3, stride=2, padding=1)
        >>> m(torch.randn(1, 1, 4, 4)).shape
        torch.Size([1, 3, 7, 7])
        >>> m(torch.randn(1, 1, 4, 4), output_size=(8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """

    def _torch_forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if isinstance(self.padding, str):
            stride = [self.stride[0], self.stride[1]]
            dilation = [self.dilation[0], self.dilation[1]]
            in_hw = [input.size(-2), input.size(-1)]
            kernel_hw = [self.kernel_size[0], self.kernel_size[1]]
            out_hw = _torch_path.crop(self.padding, in_hw, kernel_hw, stride, dilation)[2]
            _torch_path.check_string_output_size(self.padding, in_hw, out_hw, output_size,
                                                 input.dim() - 2)
            return _torch_path.conv_transpose2d_string(input, self.weight, self.bias, stride,
                                                       self.padding, self.groups, dilation,
                                                       self.padding_mode)
        assert isinstance(self.padding, tuple)  # refines the type for TorchScript
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return _torch_path.conv_transpose2d(input, self.weight, self.bias, self.stride,
                                            self.padding, output_padding, self.groups,
                                            self.dilation, self.padding_mode)

    @torch.jit.unused
    def _kernels_forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if isinstance(self.padding, str):
            _same.check_output_size(self, input, output_size)
            return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, 0,
                                    self.groups, self.dilation, padding_mode=self.padding_mode)
        output_padding = sizes._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, self.dilation)
        if output_padding is None:
            output_padding = self.output_padding
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation,
                                padding_mode=self.padding_mode)


def convert(module):
    """Make every ``torch.nn.ConvTranspose2d`` (``ConvTranspose1d``) in ``module``
    (``module`` itself included) a :class:`fastconvt.ConvTranspose2d`
    (:class:`fastconvt.ConvTranspose1d`), in place, and return ``module``.

    Each converted layer stays the same object: only its class changes. Its
    Parameters, buffers, hooks (and their removable handles, old-style
    ``torch.nn.utils.weight_norm``/``spectral_norm`` included), training mode and
    device are untouched, and so is every reference to it held elsewhere (an
    optimizer, a list of layers). A layer under ``torch.nn.utils.parametrize``
    (``parametrizations.weight_norm``, ``spectral_norm``, user parametrizations) is
    converted too, keeping its parametrizations; ``remove_parametrizations`` later
    leaves a fastconvt layer. A user subclass of torch's layers may override
    ``forward``, so it is left on torch, with a warning naming it.

    Examples::

        >>> model = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), nn.ReLU())
        >>> fastconvt.convert(model)[0].__class__.__name__
        'ConvTranspose2d'
        >>> type(model[0]) is fastconvt.ConvTranspose2d
        True
    """
    ours = _classes()
    left = []
    for name, layer in module.named_modules():
        if not _swap_class(layer, ours) and isinstance(layer, tuple(ours)) \
                and not isinstance(layer, tuple(ours.values())):
            cls = type(layer)
            left.append(f"{name or '(the model)'} ({cls.__module__}.{cls.__qualname__})")
    if left:
        warnings.warn("fastconvt.convert: left on torch, as subclasses of torch's layers that "
                      "may override forward: " + ", ".join(left), stacklevel=2)
    return module


def unconvert(module):
    """Turn every fastconvt layer in ``module`` (``module`` itself included) back into
    torch's class, in place, and return ``module``: for tools that know only torch's
    layers. The same objects, Parameters, buffers, hooks and parametrizations stay.
    Raises ``ValueError`` naming the first layer whose ``padding_mode`` or string
    ``padding`` torch's layer lacks, before changing anything.

    Examples::

        >>> model = fastconvt.convert(nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1)))
        >>> type(fastconvt.unconvert(model)[0]) is nn.ConvTranspose2d
        True
    """
    torchs = {ours: theirs for theirs, ours in _classes().items()}
    layers = [(name, layer) for name, layer in module.named_modules()
              if _base(layer) in torchs]
    for name, layer in layers:
        lacking = [f"{attr}={getattr(layer, attr)!r}" for attr, fine in (
            ("padding_mode", layer.padding_mode == "zeros"),
            ("padding", not isinstance(layer.padding, str))) if not fine]
        if lacking:
            raise ValueError(f"fastconvt.unconvert: layer {name or '(the model)'} has "
                             f"{lacking[0]}, which torch's "
                             f"{torchs[_base(layer)].__name__} does not compute")
    for _, layer in layers:
        _swap_class(layer, torchs)
    return module


def _classes():
    """torch's layer classes -> fastconvt's."""
    from .conv1d import ConvTranspose1d

    return {torch.nn.ConvTranspose2d: ConvTranspose2d, torch.nn.ConvTranspose1d: ConvTranspose1d}


def _base(layer):
    """``layer``'s class, or for a parametrized layer the class parametrize extended."""
    cls = type(layer)
    return cls.__bases__[0] if parametrize.is_parametrized(layer) else cls


def _swap_class(layer, mapping):
    """Give ``layer`` the class ``mapping`` maps its class to; True if it did. The
    classes add no state to each other, so the instance stays complete. A
    parametrized layer's generated class is rebuilt over the new class with the same
    dictionary (its properties and serialisation guard), so removing the last
    parametrization rolls back to the new class."""
    base = _base(layer)
    if base not in mapping:
        return False
    if parametrize.is_parametrized(layer):
        cls = type(layer)
        layer.__class__ = type(cls.__name__, (mapping[base],), dict(cls.__dict__))
    else:
        layer.__class__ = mapping[base]
    return True
