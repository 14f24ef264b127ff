"""Deploying a converted model: ONNX export with both exporters, run in ONNX Runtime;
torch.export round trips. Models: a DCGAN-style generator, a U-Net-style decoder and a
circular-mode model, float32, against fastconvt's own outputs."""
import io
import warnings

import onnxruntime  # onnx, onnxscript and onnxruntime: the [test] extra
import pytest
import torch
import torch.nn as nn

import fastconvt


def _dcgan():
    return nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 1, 0), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh()).eval(), (2, 16, 1, 1)


class _UNetDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.conv = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x, skip):
        return self.conv(torch.cat([self.up(x), skip], 1)).relu()


def _unet():
    return _UNetDecoder().eval(), (1, 16, 5, 6), (1, 8, 10, 12)


def _circular():
    model = fastconvt.convert(nn.Sequential(nn.ConvTranspose2d(6, 4, 4, 2, 1), nn.ReLU(),
                                            nn.ConvTranspose2d(4, 3, 3, 2, 1, 1)))
    model[0].padding_mode, model[2].padding_mode = "circular", "reflect"
    return model.eval(), (2, 6, 4, 5)


MODELS = {"dcgan": _dcgan, "unet": _unet, "padding-modes": _circular}


def _inputs(shapes):
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(s, generator=g) for s in shapes)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_runs_in_onnxruntime(name, dynamo):
    torch.manual_seed(0)
    model, *shapes = MODELS[name]()
    model = fastconvt.convert(model)
    inputs = _inputs(shapes)
    with torch.no_grad():
        want = model(*inputs)
    buffer = io.BytesIO()
    names = [f"x{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buffer, dynamo=dynamo, input_names=names)
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4 * want.abs().max())


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_round_trips(name):
    torch.manual_seed(0)
    model, *shapes = MODELS[name]()
    model = fastconvt.convert(model)
    inputs = _inputs(shapes)
    program = torch.export.export(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*inputs), model(*inputs), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_onnx_graph_is_the_standard_one(mode, dynamo):
    """Zeros mode exports as one ConvTranspose, as torch's layer does; a padding mode as a
    ConvTranspose without padding and standard ONNX ops that fold the borders."""
    import onnx

    layer = fastconvt.ConvTranspose2d(4, 3, 3, 2, 1, 1, padding_mode=mode).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(1, 4, 5, 5),), buffer, dynamo=dynamo)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("ConvTranspose") == 1
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)
    if mode == "zeros":
        assert ops == ["ConvTranspose"]
    else:
        conv = next(node for node in graph.node if node.op_type == "ConvTranspose")
        pads = [list(a.ints) for a in conv.attribute if a.name == "pads"]
        assert pads in ([], [[0, 0, 0, 0]])
        assert {"Slice", "Pad", "Add"} <= set(ops)
