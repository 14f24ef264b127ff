r"""Output-size arithmetic of a transposed convolution.

Along each spatial dimension, input pixel :math:`i` reaches output pixel
:math:`o = i s - p + k d` through kernel tap :math:`k` (stride :math:`s`,
padding :math:`p`, dilation :math:`d`), so

.. math::
    \text{out} = (\text{in} - 1) s - 2 p + d (\text{kernel} - 1) + \text{output\_padding} + 1,

where ``output_padding`` (:math:`0 \le op < \max(s, d)`) picks one of the
sizes a stride makes equally valid.
"""
import operator

_DIMS = ("H", "W")


def output_size(input_size, kernel_size, stride=1, padding=0, output_padding=0, dilation=1):
    """The output size of a transposed convolution, per spatial dimension:
    ``(i - 1) * s - 2 * p + d * (k - 1) + op + 1``.

    Args:
        input_size, kernel_size, stride, padding, output_padding, dilation: an int
            or a pair of ints (height, width), as in
            :class:`torch.nn.ConvTranspose2d`; ``padding`` also ``'same'``
            (``i * s``) or ``'valid'`` (``i * s + max(d * (k - 1) + 1 - s, 0)``),
            with ``output_padding`` 0. Defaults: stride 1, padding 0,
            output_padding 0, dilation 1

    Returns:
        an int if every argument is an int, else a pair ``(H_out, W_out)``.

    Raises:
        TypeError: an argument is not an int or a pair of ints (bools included).
        ValueError: a non-positive input size, kernel size, stride or dilation; a
            negative padding or output_padding; ``output_padding >= max(stride,
            dilation)``; or a non-positive output size.

    Examples::

        >>> fastconvt.output_size(4, 3, stride=2, padding=1, output_padding=1)
        8
        >>> fastconvt.output_size((4, 5), 3, stride=(2, 3))
        (9, 15)
    """
    if isinstance(padding, str):
        return _string_output_size(input_size, kernel_size, stride, padding, output_padding,
                                   dilation)
    args = _arguments("output_size", input_size=input_size, kernel_size=kernel_size,
                      stride=stride, padding=padding, output_padding=output_padding,
                      dilation=dilation)
    pairs = {name: value for name, (value, _) in args.items()}
    ops = pairs["output_padding"]
    if any(op >= max(s, d) for op, s, d in zip(ops, pairs["stride"], pairs["dilation"])):
        raise ValueError("output_padding must be smaller than either stride or dilation, but got "
                         f"{_show(args, 'output_padding', 'stride', 'dilation')}")
    geometry = [pairs[n] for n in ("input_size", "kernel_size", "stride", "padding")]
    sizes = []
    for dim, (i, k, s, p, op, d) in enumerate(zip(*geometry, ops, pairs["dilation"])):
        size = _size(i, k, s, p, op, d)
        if size <= 0:
            where = "" if _all_scalars(args) else f" along {_DIMS[dim]}"
            raise ValueError(f"the output size{where} is not positive: "
                             f"{_formula(i, k, s, p, op, d)} = {size}")
        sizes.append(size)
    return sizes[0] if _all_scalars(args) else tuple(sizes)


def _string_output_size(input_size, kernel_size, stride, padding, output_padding, dilation):
    """:func:`output_size` for ``padding='same'`` or ``'valid'`` (TensorFlow's sizes)."""
    if padding not in ("same", "valid"):
        raise TypeError(f"output_size(): argument 'padding' must be an int, a pair of ints, "
                        f"'same' or 'valid', not str {padding!r}")
    args = _arguments("output_size", input_size=input_size, kernel_size=kernel_size,
                      stride=stride, output_padding=output_padding, dilation=dilation)
    pairs = {name: value for name, (value, _) in args.items()}
    if any(pairs["output_padding"]):
        raise ValueError(f"output_padding must be 0 with padding={padding!r}, but got "
                         f"{_show(args, 'output_padding')}")
    sizes = [string_size(padding, i, k, s, d) for i, k, s, d in zip(
        pairs["input_size"], pairs["kernel_size"], pairs["stride"], pairs["dilation"])]
    return sizes[0] if _all_scalars(args) else tuple(sizes)


def string_size(padding: str, i: int, k: int, s: int, d: int) -> int:
    """The size ``padding`` 'same' or 'valid' gives one dimension (typed: TorchScript
    compiles it into the layer's torch-operator path)."""
    return i * s + (max(d * (k - 1) + 1 - s, 0) if padding == "valid" else 0)


def output_padding_for(input_size, target_size, kernel_size, stride=1, padding=0, dilation=1):
    """The ``output_padding`` that makes a transposed convolution's output
    ``target_size``: the inverse of :func:`output_size`.

    ``output_padding`` ranges over ``0 <= op < max(stride, dilation)`` per
    dimension (what the layer accepts), so ``max(stride, dilation)`` consecutive
    sizes are reachable.

    Args:
        input_size, target_size, kernel_size, stride, padding, dilation: an int or a
            pair of ints (height, width). Defaults: stride 1, padding 0, dilation 1

    Returns:
        an int if every argument is an int, else a pair.

    Raises:
        TypeError, ValueError: as :func:`output_size`; also ValueError for a
            non-positive ``target_size`` and for a target no ``output_padding``
            reaches (the message lists the reachable sizes).

    Examples::

        >>> fastconvt.output_padding_for(4, 8, kernel_size=3, stride=2, padding=1)
        1
    """
    args = _arguments("output_padding_for", input_size=input_size, target_size=target_size,
                      kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation)
    pairs = [args[n][0] for n in ("input_size", "target_size", "kernel_size", "stride",
                                  "padding", "dilation")]
    ops = []
    for dim, (i, t, k, s, p, d) in enumerate(zip(*pairs)):
        lo, hi = _size_range(_size(i, k, s, p, 0, d), s, d)
        if not lo <= t <= hi:
            reachable = ", ".join(str(n) for n in range(max(lo, 1), hi + 1)) or "none"
            where = "" if _all_scalars(args) else f" along {_DIMS[dim]}"
            raise ValueError(f"no output_padding reaches size {t}{where} (input_size={i}, "
                             f"kernel_size={k}, stride={s}, padding={p}, dilation={d}); "
                             f"reachable sizes: {reachable}")
        ops.append(t - lo)
    return ops[0] if _all_scalars(args) else tuple(ops)


def checkerboard(kernel_size, stride, dilation=1):
    r"""How many kernel taps reach each output phase of a transposed convolution.

    Output pixel :math:`o = i s - p + k d` receives tap :math:`k` from input
    pixel :math:`i`, so the pixels of phase :math:`a = (o + p) \bmod s` receive
    exactly the taps with :math:`k d \bmod s = a`, one input pixel each (away
    from the borders). Uneven counts mean a constant input gives an uneven
    output: the layer can paint a checkerboard (Odena et al., "Deconvolution and
    Checkerboard Artifacts", Distill, 2016).

    Args:
        kernel_size, stride, dilation: an int or a pair of ints. Default dilation: 1

    Returns:
        a ``torch.int64`` tensor of shape ``(stride_h, stride_w)``; entry ``[a, b]``
        counts the taps ``(kh, kw)`` with ``(kh * dh) % sh == a`` and
        ``(kw * dw) % sw == b``: those reaching output pixels ``(oh, ow)`` with
        ``(oh + padding_h) % sh == a`` and ``(ow + padding_w) % sw == b``.

    Examples::

        >>> fastconvt.checkerboard(3, 2)
        tensor([[4, 2],
                [2, 1]])
        >>> fastconvt.checkerboard(4, 2)
        tensor([[4, 4],
                [4, 4]])
    """
    args = _arguments("checkerboard", kernel_size=kernel_size, stride=stride,
                      dilation=dilation)
    (kh, kw), (sh, sw), (dh, dw) = (value for value, _ in args.values())
    import torch  # here: the size arithmetic (and its command line) runs without torch

    rows = torch.bincount(torch.arange(kh) * dh % sh, minlength=sh)
    cols = torch.bincount(torch.arange(kw) * dw % sw, minlength=sw)
    return rows[:, None] * cols[None, :]


def _output_padding(input, output_size, stride, padding, kernel_size, dilation):
    """The ``output_padding`` that makes ``ConvTranspose2d.forward(input,
    output_size)`` return ``output_size``; None (use the module's own) when
    ``output_size`` is None.

    Takes what :meth:`torch.nn.ConvTranspose2d._output_padding` takes: a size of
    2 elements, or of 4 (3 for an unbatched input) including batch and channel
    dimensions, and raises its ValueErrors. The valid range per dimension is
    that of :func:`output_padding_for`, ``max(stride, dilation)`` sizes: torch's
    (``stride`` sizes) and more where ``dilation > stride``; within torch's
    range the result is torch's. As in torch, the geometry itself is not
    validated here: the convolution raises for it.
    """
    if output_size is None:
        return None
    non_spatial = 2 if input.dim() == 4 else 1
    if len(output_size) == non_spatial + 2:
        output_size = output_size[non_spatial:]
    if len(output_size) != 2:
        raise ValueError(f"ConvTranspose2D: for {input.dim()}D input, output_size must have 2 "
                         f"or {non_spatial + 2} elements (got {len(output_size)})")
    # per dimension in torch's order, so a 2-D input or a garbage geometry raises
    # torch's error (IndexError, TypeError) first
    ranges = [_size_range((input.size(non_spatial + j) - 1) * stride[j] - 2 * padding[j]
                          + dilation[j] * (kernel_size[j] - 1) + 1, stride[j], dilation[j])
              for j in range(2)]
    in_sizes = input.shape[non_spatial:]
    if any(not lo <= size <= hi for size, (lo, hi) in zip(output_size, ranges)):
        min_sizes, max_sizes = ([r[j] for r in ranges] for j in (0, 1))
        raise ValueError(f"requested an output size of {output_size}, but valid sizes range "
                         f"from {min_sizes} to {max_sizes} (for an input of {in_sizes})")
    return [size - lo for size, (lo, _) in zip(output_size, ranges)]


def _size(i, k, s, p, op, d):
    return (i - 1) * s - 2 * p + d * (k - 1) + op + 1


def _size_range(lo, s, d):
    """The smallest and largest sizes ``output_padding`` (0 to ``max(s, d) - 1``) reaches
    from ``lo``, the size at 0; torch's range (to ``s - 1``) for a stride or dilation
    that is not a positive int, whose ValueError torch raises before the layer
    rejects the geometry."""
    valid = type(s) is int and type(d) is int and s > 0 and d > 0
    return lo, lo + (max(s, d) if valid else s) - 1


def _formula(i, k, s, p, op, d):
    """The output-size arithmetic, spelt out: ``(4 - 1) * 2 - 2 * 1 + 1 * (3 - 1) + 1 + 1``."""
    return f"({i} - 1) * {s} - 2 * {p} + {d} * ({k} - 1) + {op} + 1"


_POSITIVE = ("input_size", "target_size", "kernel_size", "stride", "dilation")


def _arguments(function, **values):
    """Each argument as ``(pair, given_as_int)``, validated (positive sizes,
    strides and dilations; non-negative paddings)."""
    args = {name: _pair(function, name, value) for name, value in values.items()}
    for name, (pair, _) in args.items():
        if name in _POSITIVE and min(pair) <= 0:
            raise ValueError(f"{name} must be positive, but got {_show(args, name)}")
        if name not in _POSITIVE and min(pair) < 0:
            raise ValueError(f"{name} must be non-negative, but got {_show(args, name)}")
    return args


def _pair(function, name, value):
    if isinstance(value, (tuple, list)):  # torch.Size is a tuple
        if len(value) != 2:
            raise ValueError(f"{function}(): {name} must be an int or a pair of ints, but got "
                             f"{len(value)} values: {value}")
        return tuple(_int(function, name, v) for v in value), False
    return (_int(function, name, value),) * 2, True


def _int(function, name, value):
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{function}(): argument '{name}' must be an int or a pair of ints, "
                        f"not {type(value).__name__}")
    return operator.index(value)


def _all_scalars(args):
    """Whether every argument was given as one int (then the result is one too)."""
    return all(given_as_int for _, given_as_int in args.values())


def _show(args, *names):
    """``name=value`` for each name, values as given (an int or a pair)."""
    return ", ".join(f"{n}={args[n][0][0] if args[n][1] else args[n][0]}" for n in names)
