"""pytest-benchmark timings of fastconvt against torch (and ONNX Runtime when it is
installed), one group per layer, mode and dtype, plus a large matmul as the
machine's reference peak. Run through ``python -m bench`` (the README's main command).

torch's ConvTranspose2d has only padding_mode "zeros"; for a circular layer the torch side
is torch's best equivalent (``baselines.py``), which ``test_circular_baseline`` checks
against the adjoint of ``nn.Conv2d(padding_mode="circular")``.

Timing: each callable is called once untimed (twice when that call is under 50 ms)
after the session fixture has compiled the kernels, then timed for pytest-benchmark's
usual number of rounds: enough to fill ``--benchmark-max-time`` (estimated from the
last warm-up call), at least ``--benchmark-min-rounds``. A slow call therefore gets
exactly min-rounds rounds and a single warm-up. fastconvt's test then also times torch
and fastconvt as interleaved pairs for about ``--paired-seconds`` (``paired.py``'s
method; ``extra_info["paired"]``): the report's speed-ups come from those pairs, which
see the same load on a shared machine, where two separate blocks do not.
"""
import contextlib
import copy
import io
import math
import os
import time
import warnings

import numpy as np
import pytest
import torch

import fastconvt
from baselines import DTYPES, IMPLS, TorchCircularConvTranspose2d, make_module
from layers import LAYERS, MODES, flops

MATMUL_MKN = (2048, 1024, 2048)
ONNX_THREADS = 2
CIRCULAR = [name for name, layer in LAYERS.items() if layer.padding_mode == "circular"]


def _busy_seconds():
    """CPU seconds the whole machine has been busy (steal included), or None."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _time(benchmark, config, step):
    """Warm ``step`` up, then time it with pytest-benchmark (rounds as in the module doc).

    Records in extra_info["others_cpu"] the share of the machine's CPUs that other
    processes used meanwhile (timings of 0.5 s or more): above ~0.1 the timing is not
    to be trusted."""
    step()  # a first call also measures fastconvt's plans and compiles: untimed
    for _ in range(2):
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        if seconds >= 0.05:
            break
    max_time = float(config.getoption("benchmark_max_time"))
    rounds = math.ceil(max_time / max(seconds, 1e-7))
    rounds = max(rounds, config.getoption("benchmark_min_rounds"), 1)
    busy, own, wall = _busy_seconds(), os.times(), time.perf_counter()
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    wall = time.perf_counter() - wall
    if busy is not None and wall >= 0.5:  # /proc/stat counts in 10 ms ticks
        others = _busy_seconds() - busy - (sum(os.times()[:2]) - sum(own[:2]))
        benchmark.extra_info["others_cpu"] = round(max(others / (wall * os.cpu_count()), 0), 3)


def _describe(benchmark, layer, impl, dtype, mode, **more):
    benchmark.group = f"{layer} {mode} {dtype}"
    info = dict(layer=layer, impl=impl, dtype=dtype, mode=mode,
                threads=torch.get_num_threads(), flops=flops(LAYERS[layer], mode))
    benchmark.extra_info.update(info, **more)


def _plan(layer, x, weight, forced, mode):
    """The plan fastconvt used here, after its first calls measured it ("-" if this
    fastconvt has no plans): forward, and for forward+backward the backward's too."""
    if forced:
        return forced
    select = getattr(fastconvt, "select_plan", None)
    if select is None:
        return "-"
    try:
        args = layer.functional_args()
        x, weight = x.detach(), weight.detach()
        if layer.dim == 1:  # computed as the 2-D layer on one-row images
            x, weight = x.unsqueeze(-2), weight.unsqueeze(-2)
            args = dict(args, stride=(1, layer.stride), padding=(0, layer.padding),
                        output_padding=(0, layer.output_padding), dilation=(1, layer.dilation))
        plans = select(x, weight, **args)
    except Exception as error:  # noqa: BLE001 - the report shows it, the timing goes on
        return f"error: {type(error).__name__}"
    if not plans:
        return "torch"
    text = {name: "/".join(p for p in plan if p) for name, plan in plans.items()}
    if mode == "forward":
        return text["forward"]
    return "; ".join(f"{name} {value}" for name, value in text.items())


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_peak(benchmark, pytestconfig, dtype):
    """The reference peak: one large matmul on the same threads."""
    m, k, n = MATMUL_MKN
    torch.manual_seed(0)
    a = torch.randn(m, k, dtype=DTYPES[dtype])
    b = torch.randn(k, n, dtype=DTYPES[dtype])
    out = torch.empty(m, n, dtype=DTYPES[dtype])
    benchmark.group = f"matmul peak {dtype}"
    benchmark.extra_info.update(impl="torch.matmul", dtype=dtype, shape=[m, k, n],
                                threads=torch.get_num_threads(), flops=2 * m * k * n)
    _time(benchmark, pytestconfig, lambda: torch.matmul(a, b, out=out))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", LAYERS)
def test_conv_transpose2d(benchmark, pytestconfig, family, layer, dtype, mode, impl):
    """One layer, one pass, one dtype, torch's module or fastconvt's."""
    spec = LAYERS[layer]
    torch.manual_seed(0)  # same weights and data for both implementations
    module = make_module(impl, spec, DTYPES[dtype])
    module.weight.data, = spec.to_format(module.weight.data)
    x, grad = spec.to_format(torch.randn(spec.input_shape, dtype=DTYPES[dtype]),
                             torch.randn(spec.output_shape, dtype=DTYPES[dtype]))
    x.requires_grad_(mode != "forward")
    params = (x, module.weight, module.bias)
    forced = family if impl == "fastconvt" else None
    _describe(benchmark, layer, impl, dtype, mode, family="")

    if mode == "forward":
        def step():
            with torch.no_grad():
                module(x)
    else:
        def step():  # grad_input, grad_weight and grad_bias, as in training
            torch.autograd.grad(module(x), params, grad)

    with fastconvt.use_family(forced) if forced else contextlib.nullcontext():
        _time(benchmark, pytestconfig, step)
        if impl == "fastconvt":
            benchmark.extra_info["family"] = _plan(spec, x, module.weight, forced, mode)
        seconds = pytestconfig.getoption("paired_seconds")
        if impl == "fastconvt" and seconds > 0:
            from paired import paired  # it imports this module
            benchmark.extra_info["paired"] = paired(layer, dtype, mode,
                                                    seconds=seconds)._asdict()


@pytest.mark.parametrize("layer", CIRCULAR)
def test_circular_baseline(layer):
    """The torch side of a circular layer computes the adjoint of torch's own
    ``nn.Conv2d(padding_mode="circular")`` (its input gradient) plus the bias, and the same
    gradients for input, weight and bias: float64, the layer's shape."""
    spec = LAYERS[layer]
    torch.manual_seed(0)
    module = TorchCircularConvTranspose2d(**spec.conv_args(), dtype=torch.float64)
    conv = torch.nn.Conv2d(spec.out_channels, spec.in_channels, spec.kernel_size, spec.stride,
                           spec.padding, spec.dilation, spec.groups, bias=False,
                           padding_mode="circular", dtype=torch.float64)
    x = torch.randn(spec.input_shape, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(spec.output_shape, dtype=torch.float64)
    params = (x, module.weight, module.bias)

    y = torch.zeros(spec.output_shape, dtype=torch.float64, requires_grad=True)
    conv_y = torch.func.functional_call(conv, {"weight": module.weight}, (y,))
    assert conv_y.shape == x.shape
    adjoint, = torch.autograd.grad(conv_y, y, x, create_graph=True)
    expected = adjoint + module.bias.view(-1, 1, 1)
    expected_grads = torch.autograd.grad(expected, params, grad)

    out = module(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(out, params, grad), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _onnx_session(module, x):
    """An ONNX Runtime session running ``module`` exported to ONNX (in memory)."""
    import onnxruntime

    buffer = io.BytesIO()
    errors = []
    for dynamo in (False, True):  # the TorchScript exporter needs no onnxscript
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (x,), buffer, dynamo=dynamo,
                                  input_names=["x"], output_names=["y"])
            break
        except Exception as error:  # noqa: BLE001
            errors.append(f"dynamo={dynamo}: {type(error).__name__}: {error}".splitlines()[0])
            buffer = io.BytesIO()
    else:
        raise RuntimeError("torch.onnx.export failed: " + "; ".join(errors))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = ONNX_THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(buffer.getvalue(), options,
                                        providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("layer", LAYERS)
def test_onnxruntime(benchmark, pytestconfig, notes, layer):
    """ONNX Runtime's ConvTranspose, float32 forward only (its CPU kernel has no float64)."""
    spec = LAYERS[layer]
    if spec.memory_format != "contiguous":
        reason = "ONNX Runtime computes in its own layout: the same layer's NCHW row has its time"
        notes["onnx_skipped"][layer] = reason
        pytest.skip(f"ONNX Runtime: {reason}")
    if spec.padding_mode != "zeros":
        reason = (f"padding_mode={spec.padding_mode!r}: ONNX's ConvTranspose pads with zeros "
                  "only (and the TorchScript exporter mistranslates the torch side's in-place "
                  "border fold)")
        notes["onnx_skipped"][layer] = reason
        pytest.skip(f"ONNX Runtime: {reason}")
    torch.manual_seed(0)
    module = make_module("torch", spec).eval()
    x = torch.randn(spec.input_shape)
    try:
        session = _onnx_session(module, x)
        feed = {"x": x.numpy()}
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(None, feed)[0]
        if not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
            raise RuntimeError(f"wrong result (max error {np.abs(got - expected).max():.3g})")
    except Exception as error:  # noqa: BLE001 - any failure: record why, skip
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        notes["onnx_skipped"][layer] = reason
        pytest.skip(f"ONNX Runtime: {reason}")
    _describe(benchmark, layer, "onnxruntime", "float32", "forward", threads=ONNX_THREADS)
    try:
        _time(benchmark, pytestconfig, lambda: session.run(None, feed))
    finally:
        del session  # stop its thread pool before the next test


def _dcgan_generator(dtype):
    """DCGAN's generator (nz=100, ngf=64): the five layers above with BatchNorm and ReLU."""
    nn = torch.nn
    layers = []
    for spec in [layer for name, layer in LAYERS.items()
                 if name.startswith("dcgan") and layer.memory_format == "contiguous"]:
        layers.append(nn.ConvTranspose2d(**dict(spec.conv_args(), bias=False), dtype=dtype))
        layers += [nn.BatchNorm2d(spec.out_channels, dtype=dtype), nn.ReLU()]
    return nn.Sequential(*layers[:-2], nn.Tanh())


class _UNetDecoder(torch.nn.Module):
    """A U-Net decoder (1024 channels at 14x14 up to 128 at 112x112): three
    up-convolutions, each followed by a concatenated skip connection and two 3x3
    convolutions."""

    def __init__(self, dtype):
        super().__init__()
        nn, widths = torch.nn, [1024, 512, 256, 128]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2, dtype=dtype)
                                 for c in widths[:-1])
        self.convs = nn.ModuleList(nn.Sequential(
            nn.Conv2d(c, c // 2, 3, padding=1, dtype=dtype), nn.ReLU(),
            nn.Conv2d(c // 2, c // 2, 3, padding=1, dtype=dtype), nn.ReLU())
            for c in widths[:-1])

    def forward(self, x, skips):
        for up, conv, skip in zip(self.ups, self.convs, skips):
            x = conv(torch.cat([up(x), skip], 1))
        return x


def _model_steps(model, dtype):
    """(torch's step, fastconvt's step, description) for one of MODELS."""
    torch.manual_seed(0)
    if model == "dcgan-generator-training-step-b64":
        module = _dcgan_generator(dtype)
        z = torch.randn(64, 100, 1, 1, dtype=dtype)
        target = torch.randn(64, 3, 64, 64, dtype=dtype)

        def make(m):
            optimizer = torch.optim.Adam(m.parameters(), 2e-4)

            def step():  # forward, backward, Adam: a generator update
                optimizer.zero_grad()
                ((m(z) - target) ** 2).mean().backward()
                optimizer.step()
            return step
    else:  # "unet-decoder-inference-b1"
        module = _UNetDecoder(dtype)
        x = torch.randn(1, 1024, 14, 14, dtype=dtype)
        skips = [torch.randn(1, c // 2, 28 * 2 ** i, 28 * 2 ** i, dtype=dtype)
                 for i, c in enumerate([1024, 512, 256])]

        def make(m):
            def step():
                with torch.no_grad():
                    m(x, skips)
            return step
    converted = fastconvt.convert(copy.deepcopy(module))
    return make(module), make(converted)


MODELS = ["dcgan-generator-training-step-b64", "unet-decoder-inference-b1"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", MODELS)
def test_model(benchmark, pytestconfig, model, dtype):
    """A whole model, torch's layers against the same model converted: interleaved pairs
    for about --paired-seconds x 2 (pytest-benchmark times the converted model)."""
    torch_step, ours = _model_steps(model, DTYPES[dtype])
    benchmark.extra_info.update(impl="model", model=model, dtype=dtype,
                                threads=torch.get_num_threads())
    for step in (torch_step, ours, torch_step, ours):  # measures plans, compiles, warms
        step()
    from paired import interleave  # it imports this module
    result = interleave(torch_step, ours, seconds=2 * pytestconfig.getoption("paired_seconds"))
    benchmark.extra_info["paired"] = result._asdict()
    benchmark.pedantic(ours, rounds=max(1, pytestconfig.getoption("benchmark_min_rounds")),
                       iterations=1)


# padding='same' against the integer-padding layer it resembles (the README's claim that the
# crop costs nothing): k4/s2 is padding 1 exactly; k3/s2 crops asymmetrically (0 rows above,
# 1 below), its twin p1/op1 crops 1 above and 0 below.
TWINS = {"dcgan3-k4s2-same-vs-p1": (64, 256, 128, 8, 4, dict(padding=1)),
         "k3s2-same-vs-p1op1-b8": (8, 128, 64, 32, 3, dict(padding=1, output_padding=1))}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("twin", TWINS)
def test_same_padding_twin(benchmark, pytestconfig, twin, mode):
    batch, c_in, c_out, size, kernel, integer = TWINS[twin]
    torch.manual_seed(0)
    same = fastconvt.ConvTranspose2d(c_in, c_out, kernel, 2, padding="same")
    other = fastconvt.ConvTranspose2d(c_in, c_out, kernel, 2, **integer)
    other.load_state_dict(same.state_dict())
    x = torch.randn(batch, c_in, size, size, requires_grad=mode != "forward")
    grad = torch.randn(batch, c_out, 2 * size, 2 * size)
    from paired import _step, interleave  # it imports this module
    steps = [_step(m, x, grad, mode) for m in (other, same)]
    for step in steps * 2:  # measures plans, compiles, warms
        step()
    result = interleave(*steps, seconds=pytestconfig.getoption("paired_seconds"))
    benchmark.extra_info.update(impl="twin", model=twin, dtype="float32", mode=mode,
                                paired=result._asdict(), threads=torch.get_num_threads())
    benchmark.pedantic(steps[1], rounds=max(1, pytestconfig.getoption("benchmark_min_rounds")),
                       iterations=1)
