"""torch's argument checks for a transposed convolution, in torch's order: the argument
parser's TypeErrors first (an int, or a sequence of ints where torch takes an IntArrayRef),
then the operator's RuntimeErrors on values and shapes, with torch's messages."""
import operator


def _int(name, value, what="int", bool_ok=False):
    """``value`` as a Python int, rejecting what torch's argument parser rejects (which
    types a sequence by its first element: a bool is accepted after it)."""
    if (isinstance(value, bool) and not bool_ok) or not hasattr(value, "__index__"):
        raise TypeError(f"conv_transpose2d(): argument '{name}' must be {what}, "
                        f"not {type(value).__name__}")
    value = operator.index(value)
    if not -2**63 <= value < 2**63:
        raise ValueError(f"Overflow when unpacking long long: {name}={value}")
    return value


def _ints(name, value):
    """The ints of an int or a sequence (torch's IntArrayRef), as its parser takes them."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return tuple(_int(name, v, "tuple of ints", bool_ok=i > 0) for i, v in enumerate(values))


def _check_types(stride, padding, output_padding, groups, dilation):
    """torch's argument parser's TypeErrors, which come before any check of shapes."""
    _int("groups", groups)
    for name, value in (("stride", stride), ("padding", padding),
                        ("output_padding", output_padding), ("dilation", dilation)):
        _ints(name, value)


def _pair(name, value):
    """An int or a sequence of one or two ints, as a pair (torch's IntArrayRef[2])."""
    values = _ints(name, value)
    if len(values) == 1:
        return values * 2
    if len(values) != 2:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of 2 values "
                           f"to match the convolution dimensions, but got {name}={list(values)}")
    return values


def _check_arguments(input_shape, weight_shape, bias_shape, stride, padding, output_padding,
                     groups, dilation):
    """Raise torch's exception for invalid arguments; return the output's (H, W)."""
    if len(weight_shape) != 4:
        raise RuntimeError("conv_transpose2d expects a 4-D weight (C_in, C_out // groups, kH, kW), "
                           f"but got weight of size {list(weight_shape)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if min(stride) <= 0:
        raise RuntimeError("non-positive stride is not supported")
    if min(padding) < 0:
        raise RuntimeError("negative padding is not supported")
    for d, p in enumerate(padding):  # torch's guard against int64 overflow of 2 * padding
        if p > 2 ** 62 - 1:
            raise RuntimeError(f"Given padding={p} at dimension {d} , expected padding to be "
                               f"at most {2 ** 62 - 1}")
    if min(output_padding) < 0:
        raise RuntimeError("negative output_padding is not supported")
    if min(dilation) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got dilation_height: "
                           f"{dilation[0]}, dilation_width: {dilation[1]}")
    if input_shape[0] > 0 and (max(stride) >= 2 ** 31 or max(dilation) >= 2 ** 31):
        raise RuntimeError(f"stride and dilation must be below 2**31 (torch's kernels read them "
                           f"as 32-bit ints), but got stride={list(stride)}, "
                           f"dilation={list(dilation)}")
    if weight_shape[0] == 0 or weight_shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} "
                           f"at dimension 0 and non-empty, but got weight of size "
                           f"{list(weight_shape)} instead")
    if input_shape[1] != weight_shape[0]:
        raise RuntimeError(f"Given transposed=1, weight of size {list(weight_shape)}, expected "
                           f"input{list(input_shape)} to have {weight_shape[0]} channels, but got "
                           f"{input_shape[1]} channels instead")
    out_channels = weight_shape[1] * groups
    if bias_shape is not None and bias_shape != (out_channels,):
        raise RuntimeError(f"Given transposed=1, weight of size {list(weight_shape)}, expected "
                           f"bias to be 1-dimensional with {out_channels} elements, but got bias "
                           f"of size {list(bias_shape)} instead")
    if weight_shape[1] == 0 or min(weight_shape[2:]) <= 0:
        if input_shape[0] == 0:  # torch's empty-batch path reads the weight's first value
            raise IndexError("select(): index 0 out of range for tensor of size [0] at "
                             "dimension 0")
        raise RuntimeError(f"non-empty weight expected (C_out // groups and the kernel size "
                           f"must be positive), but got weight of size {list(weight_shape)}")
    # (torch's empty-batch path returns without checking output_padding)
    if input_shape[0] > 0 and any(op >= max(s, d) for op, s, d in zip(output_padding, stride,
                                                                      dilation)):
        raise RuntimeError(
            "output padding must be smaller than either stride or dilation, but got "
            f"output_padding_height: {output_padding[0]} output_padding_width: "
            f"{output_padding[1]} stride_height: {stride[0]} stride_width: {stride[1]} "
            f"dilation_height: {dilation[0]} dilation_width: {dilation[1]}")
    if input_shape[0] > 0 and min(input_shape[2:]) == 0:
        raise RuntimeError("Only zero batch or zero channel inputs are supported, but got "
                           f"input shape: {list(input_shape)}")
    out_hw = tuple(
        (i - 1) * s - 2 * p + d * (k - 1) + op + 1
        for i, s, p, d, k, op in zip(input_shape[2:], stride, padding, dilation,
                                     weight_shape[2:], output_padding))
    if max(out_hw) >= 2 ** 63 and input_shape[0] == 0:  # torch's int64 sizes wrap there
        out_hw = tuple((v + 2 ** 63) % 2 ** 64 - 2 ** 63 for v in out_hw)
    if max(out_hw) >= 2 ** 63:  # and overflow elsewhere
        raise RuntimeError(f"IntArrayRef contains an int that cannot be represented as a "
                           f"SymInt: the output size {list(out_hw)} overflows int64")
    if min(out_hw) <= 0:
        raise RuntimeError(
            f"Given input size per channel: ({input_shape[2]} x {input_shape[3]}). Calculated "
            f"output size per channel: ({out_hw[0]} x {out_hw[1]}). Output size is too small")
    return out_hw
