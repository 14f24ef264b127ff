"""torch.compile of converted models: the maps as custom operators (``fastconvt::...``)
checked with torch.library.opcheck, and whole models compiled with fullgraph=True (no
graph break), static and dynamic, giving eager's outputs and gradients."""
import pytest
import torch
import torch.nn as nn

import fastconvt
from fastconvt import _ops


def _t(*shape, channels_last=False, requires_grad=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    t = torch.randn(*shape, generator=g, dtype=dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def _op_cases():
    """(operator, args): grad and no-grad, channels_last, groups, both dtypes, every mode."""
    cases = []
    for dtype in (torch.float32, torch.float64):
        for grad in (False, True):
            for cl in (False, True):
                x = _t(2, 4, 3, 5, channels_last=cl, requires_grad=grad, dtype=dtype)
                w = _t(4, 3, 4, 3, requires_grad=grad, dtype=dtype)
                b = _t(6, requires_grad=grad, dtype=dtype)
                geometry = ([2, 1], [1, 0], [1, 2], 2)
                y = _t(2, 6, 6, 7, channels_last=cl, requires_grad=grad, dtype=dtype)
                cases += [(_ops.conv_transpose2d, (x, w, b, *geometry, [6, 7])),
                          (_ops.conv_transpose2d, (x, w, None, *geometry, [7, 7])),
                          (_ops.conv2d, (y, w, *geometry, [3, 5])),
                          (_ops.weight_correlation, (x, y, *geometry, [4, 3]))]
            x = _t(2, 3, 4, 4, requires_grad=grad, dtype=dtype)
            w = _t(3, 2, 4, 4, requires_grad=grad, dtype=dtype)
            b = _t(2, requires_grad=grad, dtype=dtype)
            cases.append((_ops.periodic_conv_transpose2d,
                          (x, w, b, [2, 2], [1, 1], [1, 1], 1, [8, 8], [1, 1])))
            for mode in ("reflect", "replicate", "circular"):
                z = _t(2, 3, 7, 8, requires_grad=grad, dtype=dtype)
                cases += [(_ops.fold_borders, (z, _t(3, requires_grad=grad, dtype=dtype),
                                               [2, 1], mode)),
                          (_ops.pad_borders, (_t(2, 3, 4, 5, requires_grad=grad, dtype=dtype),
                                              [2, 1], mode))]
    return cases


@pytest.mark.parametrize("op, args", _op_cases(),
                         ids=lambda v: v._name if hasattr(v, "_name") else None)
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def _dcgan():
    layers = []
    for c_in, c_out, k, s, p in ((16, 32, 4, 1, 0), (32, 16, 4, 2, 1), (16, 3, 4, 2, 1)):
        layers += [nn.ConvTranspose2d(c_in, c_out, k, s, p, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
    return nn.Sequential(*layers[:-2], nn.Tanh()), (4, 16, 1, 1)


class _UNetDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.ups = nn.ModuleList([nn.ConvTranspose2d(32, 16, 2, 2), nn.ConvTranspose2d(16, 8, 2, 2)])
        self.convs = nn.ModuleList([nn.Conv2d(32, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)])

    def forward(self, x):
        for up, conv in zip(self.ups, self.convs):
            u = up(x)
            x = conv(torch.cat([u, u.flip(-1)], 1)).relu()
        return x


def _unet():
    return _UNetDecoder(), (2, 32, 5, 6)


def _vocoder():
    return nn.Sequential(nn.ConvTranspose1d(16, 8, 16, 8, 4), nn.LeakyReLU(0.1),
                         nn.ConvTranspose1d(8, 4, 4, 2, 1), nn.Tanh()), (2, 16, 20)


def _circular():
    model = nn.Sequential(nn.ConvTranspose2d(6, 4, 4, 2, 1), nn.ReLU(),
                          nn.ConvTranspose2d(4, 3, 3, 2, 1, 1))
    fastconvt.convert(model)
    model[0].padding_mode, model[2].padding_mode = "circular", "reflect"
    return model, (2, 6, 4, 5)


# inductor (what users run) on the DCGAN generator; AOTAutograd alone on the others, which
# checks the same operators, fake shapes and backward without compiling C++ (CI time)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("make, backend", [(_dcgan, "inductor"), (_vocoder, "aot_eager"),
                                           (_unet, "aot_eager"), (_circular, "aot_eager")],
                         ids=["dcgan", "vocoder", "unet", "padding-modes"])
def test_compiled_model_is_one_graph_with_eagers_results(make, backend, dynamic):
    torch.manual_seed(0)
    model, shape = make()
    model = fastconvt.convert(model).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend=backend)
    params = (x, *model.parameters())
    results = []
    for run in (compiled, model):
        torch.manual_seed(1)
        out = run(x)
        results.append((out, torch.autograd.grad(out.square().sum(), params)))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    if dynamic:  # another batch size, no recompilation needed to be right
        x2 = torch.randn((3,) + shape[1:], dtype=torch.float64)
        torch.testing.assert_close(compiled(x2), model(x2), rtol=1e-10, atol=1e-12)
