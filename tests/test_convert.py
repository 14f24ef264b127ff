"""convert() on parametrized layers (weight_norm, spectral_norm, user parametrizations;
new- and old-style), 1-D and 2-D: converted, and trained step for step as torch trains
the unconverted copy; what it leaves on torch it names."""
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, parametrize

import fastconvt


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
