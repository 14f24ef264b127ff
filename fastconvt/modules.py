"""``fastconvt.ConvTranspose2d``: torch's module, computed by fastconvt's kernels."""
import torch

from .functional import conv_transpose2d


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    r"""Drop-in replacement for :class:`torch.nn.ConvTranspose2d`.

    A subclass that overrides only :meth:`forward`: constructor, parameters
    (``weight`` of shape :math:`(C_{in}, C_{out} / \text{groups}, kH, kW)`, ``bias`` of
    shape :math:`(C_{out})`, both initialised from
    :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, :math:`k = \text{groups} / (C_{out} kH kW)`),
    ``state_dict`` keys, ``extra_repr`` and argument checking are torch's own.

    Args:
        in_channels (int), out_channels (int), kernel_size (int or tuple),
        stride (int or tuple, default 1), padding (int or tuple, default 0),
        output_padding (int or tuple, default 0), groups (int, default 1),
        bias (bool, default True), dilation (int or tuple, default 1),
        padding_mode (str, default 'zeros'; torch accepts only 'zeros'),
        device, dtype: exactly as in :class:`torch.nn.ConvTranspose2d`.

    Shape:
        - Input: :math:`(N, C_{in}, H_{in}, W_{in})` or :math:`(C_{in}, H_{in}, W_{in})`
        - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})`,
          :math:`H_{out} = (H_{in} - 1) \times \text{stride}[0] - 2 \times \text{padding}[0]
          + \text{dilation}[0] \times (\text{kernel\_size}[0] - 1)
          + \text{output\_padding}[0] + 1`, likewise :math:`W_{out}`.

    Differences from torch: none in results; see :func:`fastconvt.conv_transpose2d`
    for which inputs fastconvt's kernels compute.

    Examples::

        >>> m = fastconvt.ConvTranspose2d(1, 3, kernel_size=3, stride=2, padding=1)
        >>> m(torch.randn(1, 1, 4, 4)).shape
        torch.Size([1, 3, 7, 7])
        >>> m(torch.randn(1, 1, 4, 4), output_size=(8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)


def convert(module):
    """Replace every ``torch.nn.ConvTranspose2d`` in ``module`` by a
    :class:`fastconvt.ConvTranspose2d` that holds the same Parameter objects.

    Works like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: containers are
    modified in place (their children are swapped) and the converted module is
    returned, so always write ``model = fastconvt.convert(model)``; when
    ``module`` is itself a ``ConvTranspose2d`` the return value is a new module.
    Only modules whose type is exactly ``torch.nn.ConvTranspose2d`` are converted
    (a user subclass may override ``forward``). Each replacement keeps its
    original's parameters, buffers, hooks, training mode and device: its state is
    a shallow copy of the original's, with the same tensors.
    """
    if type(module) is torch.nn.ConvTranspose2d:
        converted = ConvTranspose2d.__new__(ConvTranspose2d)
        converted.__dict__.update(
            {key: value.copy() if isinstance(value, dict) else value
             for key, value in module.__dict__.items()})
        return converted
    for name, child in module.named_children():
        converted = convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
