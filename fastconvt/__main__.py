"""``python -m fastconvt size ...``: a transposed convolution's output size, or
the ``output_padding`` that reaches a target size, with the arithmetic.
``python -m fastconvt warmup [--dtype ...]``: compile the kernels now, with progress.
``python -m fastconvt info``: versions, CPU, threads, products and caches."""
import argparse
import sys
import time

from . import sizes

_DESCRIPTION = """\
Print a ConvTranspose2d's output size, per dimension, with the arithmetic

    out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1

or, given --target, the output_padding (0 <= output_padding < max(stride, dilation))
that reaches that size. Each value is an int or an H,W pair such as 4,6."""

_EXAMPLES = """\
examples:
  python -m fastconvt size --input 4 --kernel 3 --stride 2 --padding 1 --output-padding 1
  python -m fastconvt size --input 4,6 --kernel 3 --stride 2 --padding 1 --target 8,12"""


def main(argv=None):
    """Run the command line; return 0 (argparse exits with status 2 on an error)."""
    parser = argparse.ArgumentParser(prog="python -m fastconvt",
                                     description="fastconvt's command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    size = commands.add_parser(
        "size", help="output size of a ConvTranspose2d, or the output_padding for a target",
        description=_DESCRIPTION, epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    size.add_argument("--input", required=True, type=_size, metavar="N",
                      help="input height and width")
    size.add_argument("--kernel", required=True, type=_size, metavar="N", help="kernel size")
    size.add_argument("--stride", type=_size, default=1, metavar="N", help="default: 1")
    size.add_argument("--padding", type=_padding, default=0, metavar="N",
                      help="an int, an H,W pair, same or valid (default: 0)")
    size.add_argument("--dilation", type=_size, default=1, metavar="N", help="default: 1")
    wanted = size.add_mutually_exclusive_group()
    wanted.add_argument("--output-padding", type=_size, metavar="N",
                        help="must be smaller than stride or dilation; default: 0")
    wanted.add_argument("--target", type=_size, metavar="N",
                        help="solve for the output_padding that gives this output size")
    warmup = commands.add_parser("warmup", help="compile (or load) the kernels now",
                                 description="Compile the kernels for each dtype now (or load "
                                 "them from Numba's on-disk cache), printing progress.")
    warmup.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                        choices=["float32", "float64", "complex64", "complex128"])
    commands.add_parser("info", help="versions, CPU, threads, products and caches",
                        description="What fastconvt runs on here, and whether its caches "
                        "are warm.")
    args = parser.parse_args(argv)
    if args.command == "warmup":
        return _warmup(args.dtype)
    if args.command == "info":
        return _info()
    if isinstance(args.padding, str):
        return _string_size(size, args)
    try:
        if args.target is None:
            output_padding = 0 if args.output_padding is None else args.output_padding
            sizes.output_size(args.input, args.kernel, args.stride, args.padding,
                              output_padding, args.dilation)
        else:
            output_padding = sizes.output_padding_for(args.input, args.target, args.kernel,
                                                      args.stride, args.padding, args.dilation)
            print(f"output_padding = {_show(output_padding)}")
    except (TypeError, ValueError) as error:
        size.error(str(error))
    _print_arithmetic(args.input, args.kernel, args.stride, args.padding, output_padding,
                      args.dilation)
    return 0


def _warmup(dtypes):
    from . import kernels

    for dtype in dtypes:
        print(f"{dtype}: compiling or loading the kernels ...", end=" ", flush=True)
        start = time.perf_counter()
        kernels.warmup((dtype,))
        print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _info():
    from pathlib import Path

    import numba
    import torch

    from . import __version__, _dispatch, _plans, kernels

    machine = _plans.machine()
    store = _plans.PlanStore()
    plan_file = store.path()
    plans = len(store._read(plan_file)) if plan_file.exists() else 0
    cache = Path(kernels._config.CACHE_PATH or ".")
    cached = len(list(cache.rglob("*.nbi"))) if cache.is_dir() else 0
    lines = [
        ("fastconvt", __version__), ("torch", machine["torch"]),
        ("numba", machine["numba"]), ("numpy", machine["numpy"]), ("cpu", machine["cpu"]),
        ("threads", f"torch {torch.get_num_threads()}, numba {numba.get_num_threads()}"),
        ("threading layer", f"{numba.config.THREADING_LAYER} (requested; Numba picks the one "
                            "in use at the first parallel launch)"),
        ("products", "torch.mm (" + ("MKL" if torch.backends.mkl.is_available() else "BLAS")
         + ")" + (", oneDNN matmul" if _plans.onednn_available() else "")),
        ("autotune", "on" if _dispatch._autotune else "off (the rule decides)"),
        ("plan file", f"{plan_file} ({plans} plans)"),
        ("numba cache", f"{cache} ({cached} kernels cached)" if kernels._config.CACHE
         else "off (FASTCONVT_NO_CACHE, or no writable folder)"),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    return 0


def _size(text):
    """``"4"`` as 4, ``"4,6"`` as (4, 6)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected an int or an H,W pair of ints, got {text!r}")
    return values[0] if len(values) == 1 else values


def _padding(text):
    """``same`` or ``valid`` as given, else as :func:`_size`."""
    return text if text in ("same", "valid") else _size(text)


def _string_size(parser, args):
    """``size`` with padding 'same' or 'valid': each dimension's size, with its arithmetic."""
    if args.target is not None:
        parser.error(f"--target needs an integer padding: padding={args.padding} sets the "
                     "output size")
    try:
        sizes.output_size(args.input, args.kernel, args.stride, args.padding,
                          args.output_padding or 0, args.dilation)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    values = (args.input, args.kernel, args.stride, args.dilation)
    pairs = [v if isinstance(v, tuple) else (v, v) for v in values]
    labelled = any(isinstance(v, tuple) for v in values)
    for dim, (i, k, s, d) in zip("HW", zip(*pairs)):
        extra = f" + max({d} * ({k} - 1) + 1 - {s}, 0)" if args.padding == "valid" else ""
        label = f"{dim}: " if labelled else ""
        print(f"{label}{i} * {s}{extra} = {sizes.string_size(args.padding, i, k, s, d)}")
        if not labelled:
            break
    return 0


def _print_arithmetic(*args):
    pairs = [v if isinstance(v, tuple) else (v, v) for v in args]
    labelled = any(isinstance(v, tuple) for v in args)
    for dim, (i, k, s, p, op, d) in zip("HW", zip(*pairs)):
        label = f"{dim}: " if labelled else ""
        print(f"{label}{sizes._formula(i, k, s, p, op, d)} = {sizes._size(i, k, s, p, op, d)}")
        if not labelled:
            break


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


if __name__ == "__main__":
    sys.exit(main())
