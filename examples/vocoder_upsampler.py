"""Convert a HiFi-GAN/MelGAN-style vocoder upsampler (weight-normalised ConvTranspose1d
layers with leaky ReLUs, mel frames -> waveform) with one line, check it computes the
same waveform, and time inference against the unconverted model, alternating in one
process.

    python examples/vocoder_upsampler.py              # 1 s of 22 kHz audio
    python examples/vocoder_upsampler.py --frames 16  # a quick look
"""
import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
from torch.nn.utils import parametrizations

import fastconvt


def upsampler(mels=80, channels=512, rates=(8, 8, 2, 2)):
    """mel frames (N, mels, T) -> waveform (N, 1, T * prod(rates)), as in HiFi-GAN V1."""
    layers = [nn.Conv1d(mels, channels, 7, padding=3)]
    for rate in rates:
        up = nn.ConvTranspose1d(channels, channels // 2, 2 * rate, rate, rate // 2)
        layers += [nn.LeakyReLU(0.1), parametrizations.weight_norm(up)]
        channels //= 2
    layers += [nn.LeakyReLU(0.1), nn.Conv1d(channels, 1, 7, padding=3), nn.Tanh()]
    return nn.Sequential(*layers)


def median_seconds(models, x, rounds):
    """Median inference time of each model, timed in alternation."""
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(x)  # first call: compiles or loads kernels, measures plans
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=86, help="mel frames (256 samples each)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    plain = upsampler().eval()
    converted = fastconvt.convert(copy.deepcopy(plain))  # the one line
    layers = [m for m in converted.modules() if isinstance(m, fastconvt.ConvTranspose1d)]
    print(f"converted {len(layers)} weight-normalised ConvTranspose1d layers")
    mel = torch.randn(1, 80, args.frames)
    with torch.no_grad():
        want, got = plain(mel), converted(mel)
    print(f"waveform of {got.shape[-1]} samples; max difference from torch's "
          f"{(got - want).abs().max().item():.2e}")
    seconds = median_seconds({"fastconvt": converted, "torch": plain}, mel, args.rounds)
    print(f"inference ({torch.get_num_threads()} threads, median of {args.rounds} alternating "
          f"rounds): fastconvt {seconds['fastconvt'] * 1e3:.1f} ms, torch "
          f"{seconds['torch'] * 1e3:.1f} ms, speed-up "
          f"{seconds['torch'] / seconds['fastconvt']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
