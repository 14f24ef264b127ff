"""``fastconvt.convert`` and ``unconvert``: every layer converted in place (nested, bare,
hooked, parametrized with weight_norm, spectral_norm or a user parametrization, new- and
old-style, 1-D and 2-D), the same objects and state, trained step for step as torch trains
the unconverted copy; what it leaves on torch (user subclasses) it names; and back."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations, parametrize

import fastconvt
from conftest import assert_close


class _Symmetric(nn.Module):
    """A user parametrization: the kernel made symmetric in its last axis."""

    def forward(self, w):
        return (w + w.flip(-1)) / 2


def _model(kind, dim):
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d if dim == 2 else nn.ConvTranspose1d
    layers = [conv(6, 4, 4, 2, 1, dtype=torch.float64), nn.Tanh(),
              conv(4, 3, 3, 1, 1, dtype=torch.float64)]
    for layer in layers[::2]:
        if kind == "weight_norm":
            parametrizations.weight_norm(layer)
        elif kind == "spectral_norm":
            parametrizations.spectral_norm(layer)
        elif kind == "user":
            parametrize.register_parametrization(layer, "weight", _Symmetric())
        elif kind == "old_weight_norm":
            torch.nn.utils.weight_norm(layer)
        elif kind == "old_spectral_norm":
            torch.nn.utils.spectral_norm(layer)
    return nn.Sequential(*layers)


def _train(model, x, steps=3):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    outs = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        out.square().mean().backward()
        opt.step()
        outs.append(out.detach())
    return outs


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "user", "old_weight_norm",
                                  "old_spectral_norm"])
def test_parametrized_layers_convert_and_train_as_torchs(kind, dim):
    ref = _model(kind, dim)
    ours = fastconvt.convert(_model(kind, dim))  # the same seed: the same model
    ours_cls = fastconvt.ConvTranspose2d if dim == 2 else fastconvt.ConvTranspose1d
    assert all(isinstance(m, ours_cls) for m in ours[::2])
    assert all(parametrize.is_parametrized(m) == (kind in ("weight_norm", "spectral_norm", "user"))
               for m in ours[::2])
    x = torch.randn((2, 6, 5, 4) if dim == 2 else (2, 6, 9), dtype=torch.float64)
    for got, want in zip(_train(ours, x), _train(ref, x)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)  # power iterations too


def test_remove_parametrizations_leaves_a_fastconvt_layer():
    model = fastconvt.convert(_model("weight_norm", 2))
    x = torch.randn(1, 6, 3, 3, dtype=torch.float64)
    want = model(x)
    for layer in model[::2]:
        parametrize.remove_parametrizations(layer, "weight")
        assert type(layer) is fastconvt.ConvTranspose2d
    torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)


def test_subclasses_are_left_with_a_warning_naming_them():
    class MyDeconv(nn.ConvTranspose2d):
        pass

    model = nn.Sequential(MyDeconv(2, 2, 2), nn.ConvTranspose2d(2, 2, 2))
    with pytest.warns(UserWarning, match=r"0 \(.*MyDeconv\)"):
        fastconvt.convert(model)
    assert type(model[0]) is MyDeconv and type(model[1]) is fastconvt.ConvTranspose2d


def test_unconvert_restores_torchs_classes_in_place():
    model = fastconvt.convert(_model("weight_norm", 2))
    plain = fastconvt.convert(_model("none", 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    want = model(x)
    layer = model[0]
    assert fastconvt.unconvert(model) is model and model[0] is layer
    assert all(type(m).__bases__[0] is nn.ConvTranspose2d for m in model[::2])  # parametrized
    assert parametrize.is_parametrized(model[0])
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
    parametrize.remove_parametrizations(model[0], "weight")
    assert type(model[0]) is nn.ConvTranspose2d
    fastconvt.unconvert(plain)
    assert [type(m) for m in plain[::2]] == [nn.ConvTranspose1d] * 2


def test_unconvert_refuses_a_padding_mode_torch_lacks_and_changes_nothing():
    model = nn.Sequential(fastconvt.ConvTranspose2d(2, 2, 3), nn.ReLU(),
                          fastconvt.ConvTranspose2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="layer 2 has padding_mode='reflect'"):
        fastconvt.unconvert(model)
    assert type(model[0]) is fastconvt.ConvTranspose2d


# ---------------------------------------------------------------------------
# nested and bare models, hooks, state dicts, an SGD step

class MyConvT(nn.ConvTranspose2d):
    """A user subclass: convert() must leave it alone (it may override forward)."""

    def forward(self, input, output_size=None):
        return super().forward(input, output_size) * 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, padding=1), nn.ReLU(),
                                 nn.BatchNorm2d(4))

    def forward(self, x):
        return self.seq(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(2, 4, 4, stride=2, padding=1)  # top level
        self.block = Block()  # Sequential inside a custom module
        self.mlist = nn.ModuleList([nn.ConvTranspose2d(4, 4, 3, padding=1, groups=2),
                                    nn.Conv2d(4, 4, 1)])
        self.mdict = nn.ModuleDict({
            "plain": nn.ConvTranspose2d(4, 4, 1, bias=False),
            "custom": MyConvT(4, 4, 3, padding=1),
            "done": fastconvt.ConvTranspose2d(4, 3, 3, stride=(1, 2), padding=1,
                                              output_padding=(0, 1)),
        })

    def forward(self, x):
        x = self.block(self.up(x))
        for m in self.mlist:
            x = torch.tanh(m(x))
        return self.mdict["done"](self.mdict["custom"](self.mdict["plain"](x)))


def _make_model():
    torch.manual_seed(0)
    return Model().double()


def test_convert_nested_model():
    model = _make_model()
    model.train()
    model.mlist[0].eval()  # a mixed training/eval state that must survive
    calls = []
    model.block.seq[0].register_forward_hook(lambda m, i, o: calls.append(type(m)) or o + 1)
    model.up.register_forward_pre_hook(lambda m, i: (i[0] * 0.5,))
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    assert calls == [nn.ConvTranspose2d]
    modules_before = dict(model.named_modules())
    types_before = {k: type(m) for k, m in modules_before.items()}
    params_before = {k: p for k, p in model.named_parameters()}
    training_before = {k: m.training for k, m in model.named_modules()}

    converted = fastconvt.convert(model)

    assert converted is model  # converted in place and returned
    modules_after = dict(model.named_modules())
    assert list(modules_after) == list(modules_before)
    to_convert = {"up", "block.seq.0", "mlist.0", "mdict.plain"}
    for name, old in modules_before.items():
        new = modules_after[name]
        if name in to_convert:
            assert types_before[name] is nn.ConvTranspose2d
            assert type(new) is fastconvt.ConvTranspose2d
        else:
            assert type(new) is types_before[name], name
        assert new is old, name  # every module stays the same object
    assert type(model.mdict["custom"]) is MyConvT
    assert type(model.mdict["done"]) is fastconvt.ConvTranspose2d
    assert type(model.mlist[1]) is nn.Conv2d and type(model.block.seq[2]) is nn.BatchNorm2d
    assert {k: p for k, p in model.named_parameters()} == params_before
    assert all(p is params_before[k] for k, p in model.named_parameters())
    assert {k: m.training for k, m in model.named_modules()} == training_before
    assert not model.mlist[0].training and model.up.training

    with torch.no_grad():
        after = model(x)
    assert calls == [nn.ConvTranspose2d, fastconvt.ConvTranspose2d]  # hooks kept
    assert_close(after, before)


def test_convert_bare_module_in_place_keeps_hook_handles():
    torch.manual_seed(0)
    m = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dtype=torch.float64).eval()
    weight, bias, text = m.weight, m.bias, repr(m)
    handle = m.register_forward_hook(lambda mod, i, o: o * 3)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = m(x)
    assert fastconvt.convert(m) is m
    assert type(m) is fastconvt.ConvTranspose2d
    assert m.weight is weight and m.bias is bias
    assert not m.training
    assert repr(m) == text
    with torch.no_grad():
        assert_close(m(x), expected)  # the hook (x3) is kept
        handle.remove()  # and its handle still removes it
        assert_close(m(x) * 3, expected)


def test_convert_leaves_subclasses_and_converted_modules_alone():
    custom = MyConvT(2, 2, 3)
    assert fastconvt.convert(custom) is custom and type(custom) is MyConvT
    done = fastconvt.ConvTranspose2d(2, 2, 3)
    assert fastconvt.convert(done) is done
    model = _make_model()
    once = fastconvt.convert(model)
    modules = dict(once.named_modules())
    twice = fastconvt.convert(once)
    assert twice is once
    assert all(m is modules[k] for k, m in twice.named_modules())


def test_convert_then_load_torch_state_dict():
    model = _make_model()
    sd = _make_model().state_dict()
    converted = fastconvt.convert(_make_model())
    result = converted.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(converted.state_dict()) == list(model.state_dict())


def test_convert_sgd_step_equals_torch():
    torch.manual_seed(0)
    torch_model = _make_model().train()
    fast_model = fastconvt.convert(copy.deepcopy(torch_model))
    assert type(fast_model.up) is fastconvt.ConvTranspose2d
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    target = torch.randn(3, 3, 6, 12, dtype=torch.float64)
    for model in (torch_model, fast_model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
    tp = dict(torch_model.named_parameters())
    fp = dict(fast_model.named_parameters())
    assert list(tp) == list(fp)
    for k in tp:
        assert_close(fp[k].grad, tp[k].grad)
        assert_close(fp[k], tp[k])
    for (k, b), (k2, b2) in zip(torch_model.named_buffers(), fast_model.named_buffers()):
        assert k == k2
        if b.is_floating_point():
            assert_close(b2, b)
        else:
            assert torch.equal(b2, b)
