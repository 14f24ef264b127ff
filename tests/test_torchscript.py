"""TorchScript: ``torch.jit.trace`` and ``torch.jit.script`` of converted models.

TorchScript cannot call Numba, so a traced or scripted fastconvt layer runs
torch's operators (and, for the padding modes, a fold made of standard ones).
The oracle is the eager converted model, which computes the same layer with
fastconvt's kernels; for the zeros mode also torch's own model.
"""
import copy
import io

import pytest
import torch
import torch.nn as nn

import fastconvt
from conftest import assert_close

# torch 2.13 deprecates TorchScript but ships it; users still deploy with it
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

MODES = ("zeros", "reflect", "replicate", "circular")


def dcgan_generator():
    return nn.Sequential(
        nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.ConvTranspose2d(16, 3, 4, 2, 1, bias=False), nn.Tanh())


class UNetDecoder(nn.Module):
    """Two up-sampling steps, each concatenated with a skip connection."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.conv1 = nn.Conv2d(32, 16, 3, padding=1)
        self.up2 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.conv2 = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x, skip1, skip2):
        x = torch.relu(self.conv1(torch.cat([self.up1(x), skip1], 1)))
        return self.conv2(torch.cat([self.up2(x), skip2], 1))


def unet_inputs(batch=2, size=4):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(batch, 32, size, size, generator=g),
            torch.randn(batch, 16, 2 * size, 2 * size, generator=g),
            torch.randn(batch, 8, 4 * size, 4 * size, generator=g))


def mode_model(mode):
    """Two layers in ``mode`` (fastconvt only: torch refuses the other modes)."""
    return nn.Sequential(
        fastconvt.ConvTranspose2d(8, 6, 4, 2, 1, padding_mode=mode), nn.ReLU(),
        fastconvt.ConvTranspose2d(6, 3, (3, 5), (2, 1), (1, 2), (1, 0), padding_mode=mode))


def converted(model):
    torch.manual_seed(0)
    fm = fastconvt.convert(copy.deepcopy(model)).eval()
    return fm


def _randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


CASES = {
    "dcgan": (dcgan_generator, lambda: (_randn(2, 16, 1, 1),), lambda: (_randn(3, 16, 1, 1),)),
    "unet": (UNetDecoder, unet_inputs, lambda: unet_inputs(1, 3)),
}
CASES.update({f"mode-{m}": ((lambda m=m: mode_model(m)), lambda: (_randn(2, 8, 5, 6),),
                            lambda: (_randn(1, 8, 4, 7),)) for m in MODES})


@pytest.fixture(params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    make, inputs, other_inputs = CASES[request.param]
    model = make().eval()
    return model, converted(model), inputs(), other_inputs()


def _unbuffered(module):
    """``module`` saved and loaded back (a TorchScript module is self-contained)."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_matches_eager(case, how):
    model, fm, inputs, other_inputs = case
    compiled = torch.jit.trace(fm, inputs) if how == "trace" else torch.jit.script(fm)
    loaded = _unbuffered(compiled)
    for args in (inputs, other_inputs):  # the other shape: the graph generalises
        with torch.no_grad():
            eager = fm(*args)
            assert_close(compiled(*args), eager)
            assert_close(loaded(*args), eager)
            if not any(isinstance(m, fastconvt.ConvTranspose2d) for m in model.modules()):
                assert_close(compiled(*args), model(*args))  # torch's own layers


def test_trace_records_torch_operators_not_an_empty_tensor():
    """A trace cannot see what Numba writes: before, the graph held only the output's
    allocation and returned uninitialised memory. Now it holds the convolution."""
    fm = converted(nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.ReLU()))
    fm(torch.randn(1, 8, 3, 3))  # an eager call first: the trace must not reuse its path
    traced = torch.jit.trace(fm, (torch.randn(1, 8, 3, 3),))
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::_convolution" in kinds
    assert "prim::PythonOp" not in kinds and "aten::empty" not in kinds


def test_trace_of_the_functional():
    w, b = torch.randn(4, 3, 3, 3), torch.randn(3)

    def f(x):
        return fastconvt.conv_transpose2d(x, w, b, stride=2, padding=1,
                                          padding_mode="circular")

    x = torch.randn(2, 4, 5, 5)
    traced = torch.jit.trace(f, (x,))
    assert_close(traced(x), f(x))
    y = torch.randn(1, 4, 6, 3)
    assert_close(traced(y), f(y))


@pytest.mark.parametrize("how", ["trace", "script"])
@pytest.mark.parametrize("mode", MODES)
def test_torchscript_gradients_match_eager(mode, how):
    """Training through a TorchScript module: torch's autograd over its operators
    gives fastconvt's gradients."""
    fm = mode_model(mode).double()
    x = _randn(2, 8, 5, 6).double()
    compiled = torch.jit.trace(fm, (x,)) if how == "trace" else torch.jit.script(fm)
    params = list(fm.parameters())
    leaves = [x.clone().requires_grad_()]
    out = compiled(leaves[0])
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves + params, g)
    x2 = x.clone().requires_grad_()
    expected = torch.autograd.grad(fm(x2), [x2] + params, g)
    for got, want in zip(grads, expected):
        assert_close(got, want)


def test_script_leaves_the_eager_model_on_fastconvt():
    fm = converted(dcgan_generator())
    scripted = torch.jit.script(fm)
    assert all(type(m) is not nn.ConvTranspose2d for m in fm.modules())
    assert type(fm[0]) is fastconvt.ConvTranspose2d
    # the scripted module shares the parameters
    with torch.no_grad():
        fm[0].weight.mul_(2)
    x = _randn(2, 16, 1, 1)
    with torch.no_grad():
        assert_close(scripted(x), fm(x))


def test_scripted_output_size():
    fm = fastconvt.ConvTranspose2d(4, 2, 3, stride=2, padding=1, padding_mode="reflect")
    scripted = torch.jit.script(fm)
    x = torch.randn(1, 4, 5, 5)
    assert_close(scripted(x, output_size=[10, 10]), fm(x, output_size=[10, 10]))
    assert scripted(x, output_size=[10, 10]).shape[-2:] == (10, 10)


@pytest.mark.parametrize("mode, padding, message", [
    ("reflect", 3, "Padding size should be less than"),
    ("circular", 3, "wrapping around more than once"),
])
def test_scripted_fold_raises_as_eager(mode, padding, message):
    """Where ``nn.Conv2d`` could not pad the output, the scripted layer raises the
    eager layer's error."""
    fm = fastconvt.ConvTranspose2d(2, 2, 7, stride=1, padding=padding, padding_mode=mode)
    x = torch.randn(1, 2, 1, 1)  # output 7 - 2 * padding: 1 row
    with pytest.raises(RuntimeError, match=message):
        fm(x)
    with pytest.raises(torch.jit.Error, match=message):
        torch.jit.script(fm)(x)
