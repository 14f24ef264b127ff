"""The layers the benchmark times: real ConvTranspose2d layers from common models.

Each :class:`Layer` holds a name, the batch size, the input's height and width and
the ``nn.ConvTranspose2d`` arguments. ``LAYERS`` maps names to layers, in table order.

A layer with ``padding_mode="circular"`` (periodic boundaries) is fastconvt's
``ConvTranspose2d(padding_mode="circular")``, the adjoint of ``nn.Conv2d`` with circular
padding; torch's ConvTranspose2d accepts only "zeros", so the benchmark's torch side for it
is torch's best equivalent, a zeros-mode transposed convolution with ``padding=0`` whose
border rows and columns are then folded back by hand (``test_layers.py``).
"""
from typing import NamedTuple

MODES = ("forward", "forward+backward")


def _pair(value):
    return value if isinstance(value, tuple) else (value, value)


class Layer(NamedTuple):
    """A layer; ``kernel_size``, ``stride``, ``padding`` and ``output_padding`` are an
    int or an (H, W) pair, as in ``nn.ConvTranspose2d``."""
    name: str
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: object
    stride: object = 1
    padding: object = 0
    output_padding: object = 0
    groups: int = 1
    dilation: int = 1
    padding_mode: str = "zeros"
    memory_format: str = "contiguous"  # or "channels_last": input, weight and gradient
    dim: int = 2  # 1: a ConvTranspose1d over sequences of ``width`` (``height`` 1)

    def _hw(self, value, fill):
        """An argument as (H, W); a 1-D layer's has ``fill`` along H (1 for kernel sizes
        and strides, 0 for paddings)."""
        return (fill, value) if self.dim == 1 else _pair(value)

    @property
    def kernel_hw(self):
        return self._hw(self.kernel_size, 1)

    @property
    def input_shape(self):
        spatial = (self.width,) if self.dim == 1 else (self.height, self.width)
        return (self.batch, self.in_channels) + spatial

    @property
    def output_shape(self):
        out = tuple((n - 1) * s - 2 * p + self.dilation * (k - 1) + op + 1
                    for n, k, s, p, op in zip((self.height, self.width), self.kernel_hw,
                                              self._hw(self.stride, 1), self._hw(self.padding, 0),
                                              self._hw(self.output_padding, 0)))
        return (self.batch, self.out_channels) + (out[1:] if self.dim == 1 else out)

    def to_format(self, *tensors):
        """``tensors`` (4-D) in the layer's memory format, contiguous otherwise."""
        import torch

        fmt = getattr(torch, self.memory_format.replace("contiguous", "contiguous_format"))
        return tuple(t.contiguous(memory_format=fmt) for t in tensors)

    def conv_args(self):
        """Keyword arguments of ``nn.ConvTranspose2d`` (bias and padding_mode included)."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation, bias=True, padding_mode=self.padding_mode)

    def functional_args(self):
        """``stride`` ... ``dilation`` as keywords of ``F.conv_transpose2d`` (the geometry;
        not ``padding_mode``, which torch's functional does not take)."""
        return dict(stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation)


_LAYERS = [
    # DCGAN generator, nz=100, ngf=64, batch 64: all five layers.
    Layer("dcgan1-100to512-k4s1-1x1-b64", 64, 100, 512, 1, 1, 4, 1, 0),
    Layer("dcgan2-512to256-k4s2-4x4-b64", 64, 512, 256, 4, 4, 4, 2, 1),
    Layer("dcgan3-256to128-k4s2-8x8-b64", 64, 256, 128, 8, 8, 4, 2, 1),
    Layer("dcgan4-128to64-k4s2-16x16-b64", 64, 128, 64, 16, 16, 4, 2, 1),
    Layer("dcgan5-64to3-k4s2-32x32-b64", 64, 64, 3, 32, 32, 4, 2, 1),
    # U-Net up-convolutions.
    Layer("unet-1024to512-k2s2-28x28", 1, 1024, 512, 28, 28, 2, 2),
    Layer("unet-128to64-k2s2-112x112", 1, 128, 64, 112, 112, 2, 2),
    # FCN upsampling (21 PASCAL VOC classes): FCN-16s' 2x and FCN-32s' 32x.
    Layer("fcn-21-k4s2-32x32", 1, 21, 21, 32, 32, 4, 2),
    Layer("fcn-21-k64s32p16-16x16", 1, 21, 21, 16, 16, 64, 32, 16),
    # Depthwise (MobileNet-style decoders).
    Layer("depthwise-64-k4s2-56x56-b8", 8, 64, 64, 56, 56, 4, 2, 1, groups=64),
    # FSRCNN's last layer (x3 super-resolution).
    Layer("fsrcnn-56to1-k9s3-128x128", 1, 56, 1, 128, 128, 9, 3, 4, output_padding=2),
    # Less common geometries.
    Layer("stride1-64to64-k3-32x32-b8", 8, 64, 64, 32, 32, 3, 1, 1),
    Layer("dilated-32to32-k3s2d2-32x32-b4", 4, 32, 32, 32, 32, 3, 2, 1,
          output_padding=1, dilation=2),
    Layer("autoencoder-16to8-k3s2-14x14-b32", 32, 16, 8, 14, 14, 3, 2, 1, output_padding=1),
    # Periodic boundaries (lattice field theory, PDE surrogates on a torus): a decoder's 2x
    # upsampling from a 32x32 to a 64x64 periodic lattice, the adjoint of a circular Conv2d.
    Layer("circular-64to32-k4s2p1-32x32-b8", 8, 64, 32, 32, 32, 4, 2, 1,
          padding_mode="circular"),
    # Grouped (ResNeXt-style decoders): 8 groups of 32 channels.
    Layer("grouped-256to256-g8-k4s2-16x16-b8", 8, 256, 256, 16, 16, 4, 2, 1, groups=8),
    # An audio vocoder's upsampler (HiFi-GAN/MelGAN-style): a 1-D signal as a 1-row image.
    Layer("vocoder-256to128-k1x16s8-1x512-b4", 4, 256, 128, 1, 512, (1, 16), (1, 8), (0, 4)),
    # The same upsamplers as ConvTranspose1d layers over sequences (HiFi-GAN/MelGAN-style
    # vocoders: x8, x8, x2 up to 32k samples).
    Layer("vocoder1d-512to256-k16s8p4-L512-b1", 1, 512, 256, 1, 512, 16, 8, 4, dim=1),
    Layer("vocoder1d-256to128-k16s8p4-L4096-b1", 1, 256, 128, 1, 4096, 16, 8, 4, dim=1),
    Layer("vocoder1d-128to64-k4s2p1-L16384-b1", 1, 128, 64, 1, 16384, 4, 2, 1, dim=1),
    # The article's example: tiny, all overhead.
    Layer("article-1to1-k3s2-4x4", 1, 1, 1, 4, 4, 3, 2, 1),
]
# channels_last, how torch users run CNNs fast on CPUs: the DCGAN, U-Net and stride-1 layers
_LAYERS += [layer._replace(name=layer.name + "-cl", memory_format="channels_last")
            for layer in _LAYERS if layer.name.split("-")[0] in ("dcgan2", "dcgan3", "dcgan4",
                                                                 "unet", "stride1")]
LAYERS = {layer.name: layer for layer in _LAYERS}


def flops(layer, mode="forward"):
    """2 x the useful multiply-adds of one pass (none by inserted zeros):
    N * C_in * (C_out / groups) * kH * kW * H_in * W_in for a forward,
    3x that for a forward+backward (grad_input and grad_weight cost one forward each).
    A circular layer counts the same as the zeros-mode layer of its shape: its border
    fold is additions only."""
    if isinstance(layer, str):
        layer = LAYERS[layer]
    k_h, k_w = layer.kernel_hw
    forward = (2 * layer.batch * layer.in_channels * (layer.out_channels // layer.groups)
               * k_h * k_w * layer.height * layer.width)
    return forward * (3 if mode == "forward+backward" else 1)
