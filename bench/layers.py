"""The layers the benchmark times: real ConvTranspose2d layers from common models.

Each entry: (batch, C_in, C_out, H_in, W_in, kernel, stride, padding, output_padding,
groups, dilation).
"""
LAYERS = {
    "article-1to1-k3s2-4x4": (1, 1, 1, 4, 4, 3, 2, 1, 0, 1, 1),
    "dcgan-128to64-k4s2-16x16-b16": (16, 128, 64, 16, 16, 4, 2, 1, 0, 1, 1),
    "dcgan-64to3-k4s2-32x32-b16": (16, 64, 3, 32, 32, 4, 2, 1, 0, 1, 1),
    "depthwise-64-k4s2-56x56-b8": (8, 64, 64, 56, 56, 4, 2, 1, 0, 64, 1),
    "autoencoder-16to8-k3s2-14x14-b32": (32, 16, 8, 14, 14, 3, 2, 1, 1, 1, 1),
}


def flops(layer):
    """Multiply-adds x 2 of one forward pass (no multiplications by inserted zeros)."""
    n, c_in, c_out, h, w, k, s, p, op, groups, d = layer
    return 2 * n * c_in * (c_out // groups) * k * k * h * w
