"""``fastconvt.conv_transpose2d``: the signature and results of
``torch.nn.functional.conv_transpose2d``, computed by fastconvt's kernels."""
import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from . import _autograd, _bridge, _dispatch, _ops, _torch_path
from ._arguments import _check_arguments, _check_types, _int, _pair

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
# computed in float32, returned in their own dtype
_UPCAST_DTYPES = (torch.float16, torch.bfloat16)
_NUMPY_DTYPES = {t: np.dtype(str(t).split(".")[1]) for t in _KERNEL_DTYPES}


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, *, padding_mode="zeros"):
    r"""Applies a 2-D transposed convolution over an input image composed of
    several input planes; see :class:`fastconvt.ConvTranspose2d`.

    Args:
        input: input tensor of shape :math:`(N, C_{in}, H_{in}, W_{in})` or
            :math:`(C_{in}, H_{in}, W_{in})`.
        weight: filters of shape :math:`(C_{in}, C_{out} / \text{groups}, kH, kW)`.
        bias: optional bias of shape :math:`(C_{out})`. Default: None
        stride, padding, output_padding, dilation: an int or a pair of ints; ``padding``
            also ``'same'`` (output = input x stride) or ``'valid'``, TensorFlow's sizes
            and asymmetric crop (the README's "Porting from Keras"). Defaults: 1, 0, 0, 1
        groups: split input into groups; :math:`C_{in}` must be divisible by it.
            Default: 1
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``
            (keyword only; torch has only ``'zeros'``). Mode ``m`` makes this the exact
            adjoint of ``nn.Conv2d(padding_mode=m)`` with the same weight and geometry:
            what ``'zeros'`` crops at the borders is folded back onto the pixels that
            mode ``m`` copies into its padding (wrapped around, mirrored without
            repeating the edge, or added onto the edge pixel). The output shape is the
            ``'zeros'`` one; ``'reflect'`` needs ``padding`` smaller than the output
            and ``'circular'`` no larger, and raises as ``nn.Conv2d`` does otherwise.
            Default: ``'zeros'``

    Shape:
        Output: :math:`(N, C_{out}, H_{out}, W_{out})` or :math:`(C_{out}, H_{out}, W_{out})`
        with :math:`H_{out} = (H_{in} - 1) \times \text{stride}[0] - 2 \times \text{padding}[0]
        + \text{dilation}[0] \times (kH - 1) + \text{output\_padding}[0] + 1`, likewise
        :math:`W_{out}`.

    Differences from torch: none in results, gradients or memory format. CPU
    tensors of one dtype are computed by fastconvt's kernels: float32, float64,
    complex64 and complex128 in their own dtype, float16 and bfloat16 in float32
    (rounded once to their dtype at the end). Other devices and
    ``__torch_function__`` subclasses are passed to
    :func:`torch.nn.functional.conv_transpose2d`, as are integer and mixed dtypes,
    which torch rejects. Errors have torch's types; where torch is inconsistent,
    fastconvt always rejects: an output height or width of 0 and ``dilation=0``
    raise ``RuntimeError`` for every dtype and batch size (torch's float32 path
    accepts some of them).

    Examples::

        >>> x = torch.randn(1, 1, 4, 4)
        >>> w = torch.randn(1, 1, 3, 3)
        >>> fastconvt.conv_transpose2d(x, w, stride=2, padding=1).shape
        torch.Size([1, 1, 7, 7])
    """
    if _autocast_cpu():
        cast = _autocast(input, weight, bias)
        if cast is not None:
            with _no_autocast():
                return conv_transpose2d(*cast, stride, padding, output_padding, groups,
                                        dilation, padding_mode=padding_mode)
    key = _call_key(input, weight, bias, stride, padding, output_padding, groups, dilation,
                    padding_mode)
    prepared = _calls.get(key) if key is not None else None
    if prepared is not None and not torch.jit.is_tracing():  # (a key: not compiling)
        return _run_prepared(input, weight, bias, padding_mode, *prepared)
    if isinstance(padding, str):  # 'same' or 'valid' (_same): the zeros mode's crop, given
        from . import _same
        _same.check(padding, output_padding)  # (torch's parser checks types first)
    check_padding_mode(padding_mode)
    # a trace records torch operators and cannot see what Numba writes: it gets
    # torch's operators, so the traced graph computes the same layer
    tracing = torch.jit.is_tracing()
    if tracing or not _uses_kernels(input, weight, bias):
        if not tracing and _uses_kernels(input, weight, bias, _UPCAST_DTYPES):
            up = lambda t: None if t is None else t.float()  # noqa: E731
            return conv_transpose2d(up(input), up(weight), up(bias), stride, padding,
                                    output_padding, groups, dilation,
                                    padding_mode=padding_mode).to(input.dtype)
        if isinstance(padding, str):
            return _same.with_torch(input, weight, bias, stride, padding, groups, dilation,
                                    padding_mode)
        if padding_mode != "zeros":
            return _fold_with_torch(input, weight, bias, stride, padding, output_padding,
                                    groups, dilation, padding_mode)
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding,
                                  groups, dilation)
    unbatched, input, geometry, out_hw, ends = _prepare_any(input, weight, bias, stride, padding,
                                                            output_padding, groups, dilation)
    if padding_mode != "zeros":
        _torch_path.check_foldable(padding_mode, geometry[1],
                                   [input.shape[0], weight.shape[1] * geometry[3], *out_hw],
                                   ends)
    if input.shape[0] == 0:
        out = _empty_batch(input, weight, bias, (0, weight.shape[1] * geometry[3]) + out_hw)
        return out.squeeze(0) if unbatched else out
    prepared = (unbatched, geometry, out_hw, _channels_last_output(input, weight, unbatched),
                None if padding_mode == "zeros" else ends)
    if key is not None:
        _calls[key] = prepared
        if len(_calls) > _MAX_CALLS:
            _calls.pop(next(iter(_calls)))  # the oldest
    return _run_prepared(input if not unbatched else input.squeeze(0), weight, bias,
                         padding_mode, *prepared)


def _autocast_cpu():
    """Whether CPU autocast is on (torch >= 2.4 names the device; older torch has its own
    function)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def _autocast(input, weight, bias):
    """``(input, weight, bias)`` cast as torch's CPU autocast casts ``conv_transpose2d``
    (on its lower-precision list: every floating tensor but a float64 one goes to the
    autocast dtype), or None where the operands are not all CPU tensors (torch's own
    autocast then applies on the way to its operator)."""
    tensors = [t for t in (input, weight, bias) if t is not None]
    if not all(isinstance(t, torch.Tensor) and t.is_cpu for t in tensors):
        return None
    try:
        dtype = torch.get_autocast_dtype("cpu")
    except AttributeError:  # torch < 2.4
        dtype = torch.get_autocast_cpu_dtype()
    cast = lambda t: t.to(dtype) if (t is not None and t.is_floating_point()  # noqa: E731
                                     and t.dtype != torch.float64) else t
    return cast(input), cast(weight), cast(bias)


# Calls validated before, by all that decides how they run (operand types, devices,
# dtypes, shapes and strides, and the arguments, ints and tuples of ints only): a
# module's repeated call skips argument parsing, validation and layout inspection.
_calls = {}
_MAX_CALLS = 1024
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # no __torch_function__ of their own
_STRIDED = torch.strided


def _call_key(input, weight, bias, *args):
    """The key of this call in ``_calls``, or None where it cannot be cached."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None  # Dynamo traces through caches; wrapped tensors have no strides to key on
    if type(input) not in _PLAIN or type(weight) not in _PLAIN or not (
            input.is_cpu and weight.is_cpu) or input.layout is not _STRIDED \
            or weight.layout is not _STRIDED:
        return None
    if bias is None:
        b = None
    elif type(bias) in _PLAIN and bias.is_cpu and bias.layout is _STRIDED:
        b = (bias.dtype, bias.shape, bias.stride())
    else:
        return None
    for i, v in enumerate(args[:5]):
        if type(v) is not int and not (type(v) is tuple and _all_ints(v)) \
                and not (i == 1 and type(v) is str):  # (padding 'same' or 'valid')
            return None
    return (input.dtype, input.shape, input.stride(), weight.dtype, weight.shape,
            weight.stride(), b) + args


def _all_ints(values):
    for v in values:
        if type(v) is not int:
            return False
    return True


def _run_prepared(input, weight, bias, padding_mode, unbatched, geometry, out_hw,
                  channels_last, ends):
    """The kernels on a call validated before (``_calls``): a non-empty batch."""
    x = input.unsqueeze(0) if unbatched else input
    out = _apply_kernels(x, weight, bias, geometry, out_hw, padding_mode, ends)
    # (the kernels' output follows the input's layout; torch's, the rule below)
    out = out.contiguous(memory_format=torch.channels_last if channels_last
                         else torch.contiguous_format)
    return out.squeeze(0) if unbatched else out


def _channels_last_output(input, weight, unbatched):
    """torch's rule: a channels_last output where the input or the weight is
    channels_last, except that an unbatched input's own strides do not count."""
    return (not unbatched and _is_channels_last(input)) or _is_channels_last(weight)


def check_padding_mode(padding_mode):
    """Raise torch's ``ValueError`` for a mode not in ``PADDING_MODES``."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, but got "
                         f"padding_mode={padding_mode!r}")


def select_family(input, weight, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The kernel family that computes this call's forward: ``"direct"``, ``"gemm"``,
    or ``"torch"`` where fastconvt delegates. Arguments as in :func:`conv_transpose2d`
    (``bias`` does not matter); raises as it would. Under ``set_autotune(True)`` a
    configuration not yet timed reports the rule's choice."""
    if _uses_kernels(input, weight, None, _UPCAST_DTYPES):
        dtype = torch.float32
    elif _uses_kernels(input, weight, None):
        dtype = input.dtype
    else:
        return "torch"
    _, input, geometry, out_hw, _ = _prepare_any(input, weight, None, stride, padding,
                                                 output_padding, groups, dilation)
    out_shape = (input.shape[0], weight.shape[1] * geometry[3]) + out_hw
    shapes = (tuple(input.shape), tuple(weight.shape), None)
    return _dispatch.family("conv_transpose2d", shapes, _NUMPY_DTYPES[dtype], geometry,
                            out_hw, out_shape)


def select_plan(input, weight, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The plans that compute this layer, as ``{"forward": ..., "backward": ...}`` (and
    ``"input gradient"``, ``"weight gradient"`` where the backward runs the two maps
    on their own plans); each a ``(family, form, product)`` tuple (see the README's
    Plans). A configuration not yet measured reports the rule's plans; ``{}`` where
    fastconvt delegates to torch. Arguments as in :func:`conv_transpose2d`."""
    if select_family(input, weight, stride, padding, output_padding, groups,
                     dilation) == "torch":
        return {}
    dtype = torch.float32 if input.dtype in _UPCAST_DTYPES else input.dtype
    _, input, geometry, out_hw, _ = _prepare_any(input, weight, None, stride, padding,
                                                 output_padding, groups, dilation)
    layout = "channels_last" if _bridge._is_channels_last(input) else ""
    return _dispatch.plans_of(tuple(input.shape), tuple(weight.shape), _NUMPY_DTYPES[dtype],
                              geometry, out_hw, layout)


def _prepare_any(input, weight, bias, stride, padding, output_padding, groups, dilation):
    """:func:`_prepare` for any ``padding``, 'same' and 'valid' (checked) included, and the
    border at the end of each axis (None: the padding's, at both ends)."""
    if isinstance(padding, str):
        from . import _same
        _same.check(padding, output_padding)
        return _same.prepare(input, weight, bias, stride, padding, groups, dilation)
    return _prepare(input, weight, bias, stride, padding, output_padding, groups,
                    dilation) + (None,)


def _prepare(input, weight, bias, stride, padding, output_padding, groups, dilation):
    """Validate as torch does; return (unbatched, 4-D input, geometry, output (H, W))."""
    _check_types(stride, padding, output_padding, groups, dilation)
    if input.dim() not in (3, 4):
        raise RuntimeError("Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, "
                           f"but got input of size: {list(input.shape)}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    args = (tuple(input.shape), tuple(weight.shape), None if bias is None else tuple(bias.shape),
            stride, padding, output_padding, groups, dilation)
    # ints and tuples of ints (a module's arguments) are cached; anything else (lists,
    # bools, NumPy ints) is checked afresh, so a cached 1 never stands in for True
    cacheable = all(type(v) is int or (type(v) is tuple and all(type(e) is int for e in v))
                    for v in args[3:])
    if not cacheable or torch.compiler.is_compiling():  # Dynamo traces through caches
        geometry, out_hw = _geometry(*args)
    else:
        geometry, out_hw = _cached_geometry(*args)
    return unbatched, input, geometry, out_hw


def _geometry(input_shape, weight_shape, bias_shape, stride, padding, output_padding, groups,
              dilation):
    """Normalised (stride, padding, dilation, groups) and the output (H, W)."""
    stride = _pair("stride", stride)
    padding = _pair("padding", padding)
    output_padding = _pair("output_padding", output_padding)
    dilation = _pair("dilation", dilation)
    groups = _int("groups", groups)
    out_hw = _check_arguments(input_shape, weight_shape, bias_shape, stride, padding,
                              output_padding, groups, dilation)
    return (stride, padding, dilation, groups), out_hw


# argument parsing, once per configuration: a module's calls hit this cache
_cached_geometry = functools.lru_cache(maxsize=1024)(_geometry)


def _apply_kernels(input, weight, bias, geometry, out_hw, padding_mode, ends=None):
    if torch.compiler.is_compiling():
        # Dynamo cannot trace Numba: a graph gets the maps as operators it knows
        return _ops.layer(input, weight, bias, geometry, out_hw, padding_mode, ends)
    return _autograd.conv_transpose2d(input, weight, bias, geometry, out_hw, padding_mode, ends)


def _fold_with_torch(input, weight, bias, stride, padding, output_padding, groups, dilation,
                     mode):
    """A non-zeros padding mode from torch operations, for calls fastconvt's kernels
    do not compute (tracing, other devices, ``__torch_function__`` subclasses)."""
    padding = _pair("padding", padding)
    if min(padding) < 0:
        raise RuntimeError("negative padding is not supported")
    with warnings.catch_warnings():
        # the fold's size checks are Python conditions: a trace keeps them as constants,
        # which is what they are for the traced shapes (the slices follow the shapes)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return _torch_path.conv_transpose2d(
            input, weight, bias, list(_pair("stride", stride)), list(padding),
            list(_pair("output_padding", output_padding)), _int("groups", groups),
            list(_pair("dilation", dilation)), mode)


def _empty_batch(input, weight, bias, out_shape):
    """An empty batch's output, built as torch builds it (an elementwise product
    viewed to the output shape): nothing to compute, and the same strides and
    zero gradients as torch's."""
    if input.is_complex():
        # torch allocates a complex layer's output afresh, computing its contiguous
        # strides with an int64 overflow check (a real layer's wrap silently)
        stride = 1
        for size in reversed(out_shape[1:]):
            stride *= max(size, 1)
            if stride >= 2 ** 63:
                raise RuntimeError("Stride calculation overflowed")
    out = input * weight.reshape(-1)[0]
    if bias is not None:
        out = out + bias[0]
    return out.view(out_shape)


def _uses_kernels(input, weight, bias, dtypes=_KERNEL_DTYPES):
    """Whether fastconvt's kernels compute this call in its own dtype, one of
    ``dtypes`` (else torch does)."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            return False
    if torch.overrides.has_torch_function(tensors) or input.dtype not in dtypes:
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.layout != torch.strided or t.dtype != input.dtype:
            return False
    return True


def _is_channels_last(t):
    """``t.suggest_memory_format() == torch.channels_last`` for a 4-D tensor: a port of
    c10's ``is_channels_last_strides_2d``, which decides torch's output layout. Inside
    a torch.func transform (wrapped tensors, whose strides are not the data's) no."""
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return False
    if t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last):
        return False  # the common case, decided in C++
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    min_stride = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < min_stride:
            return False
        # ambiguous N111-like cases fall back to NCHW, as in c10
        if d == 0 and min_stride == strides[1]:
            return False
        min_stride = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True
