"""Train a small DCGAN on scikit-learn's handwritten digits with fastconvt.

The generator is plain PyTorch; one line (``fastconvt.convert(generator)``) puts its
transposed convolutions on fastconvt's kernels. The script trains, writes a grid of
generated digits and the loss curves as PNGs, and times a generator training step
against an unconverted copy of the same generator, interleaved in one process.

    python examples/dcgan_digits.py                  # 2000 steps, about 2.5 minutes on 2 cores
    python examples/dcgan_digits.py --steps 20 --out /tmp/dcgan   # a quick look

Needs scikit-learn (the data set ships with it) and matplotlib: ``pip install
fastconvt[examples]``.
"""
import argparse
import copy
import statistics
import time
from pathlib import Path

import matplotlib
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import fastconvt

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NZ = 32  # latent size


def digits():
    """The 1,797 8x8 digits, upsampled to 16x16 and scaled to [-1, 1], as (N, 1, 16, 16)."""
    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16
    return F.interpolate(images, size=16, mode="bilinear", align_corners=False) * 2 - 1


def generator():
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, 128, 4, 1, 0, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())


def discriminator():
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Conv2d(128, 1, 4, 1, 0), nn.Flatten())


def train(g, d, data, steps, batch, seed=0):
    """Standard DCGAN training (Adam 2e-4, betas 0.5/0.999); returns the loss curves."""
    torch.manual_seed(seed)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    losses = {"generator": [], "discriminator": []}
    for step in range(steps):
        real = data[torch.randint(len(data), (batch,))]
        fake = g(torch.randn(batch, NZ, 1, 1))
        ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
        opt_d.zero_grad()
        loss_d = bce(d(real), ones) + bce(d(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_g = bce(d(fake), ones)
        loss_g.backward()
        opt_g.step()
        losses["generator"].append(loss_g.item())
        losses["discriminator"].append(loss_d.item())
        if step % max(1, steps // 10) == 0:
            print(f"step {step:5d}: generator {loss_g.item():.3f}, "
                  f"discriminator {loss_d.item():.3f}", flush=True)
    return losses


def generator_step_times(converted, plain, batch, rounds):
    """Median seconds of one generator update (forward, backward, Adam) for each of two
    generators, timed in alternation so both see the same machine load."""
    times = {}
    steps = {}
    for name, g in (("fastconvt", converted), ("torch", plain)):
        opt = torch.optim.Adam(g.parameters(), 2e-4)
        z = torch.randn(batch, NZ, 1, 1)

        def step(g=g, opt=opt, z=z):
            opt.zero_grad()
            g(z).square().mean().backward()
            opt.step()
        steps[name] = step
        step()  # first call: compiles or loads kernels, measures plans
        times[name] = []
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def save_grid(g, path, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        images = g.eval()(torch.randn(64, NZ, 1, 1)).squeeze(1)
    g.train()
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, image in zip(axes.flat, images):
        ax.imshow(image.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle("DCGAN generator (fastconvt) on scikit-learn's digits")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_losses(losses, path):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in losses.items():
        ax.plot(values, label=name, linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("BCE loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--timing-rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("dcgan-digits"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    plain = generator()
    g = fastconvt.convert(copy.deepcopy(plain))  # the one line
    d = discriminator()
    data = digits()
    print(f"{len(data)} digits, {args.steps} steps of batch {args.batch}", flush=True)
    start = time.perf_counter()
    losses = train(g, d, data, args.steps, args.batch)
    print(f"trained in {time.perf_counter() - start:.1f} s")
    save_grid(g, args.out / "samples.png")
    save_losses(losses, args.out / "losses.png")
    seconds = generator_step_times(copy.deepcopy(g), plain, args.batch, args.timing_rounds)
    print(f"generator step (batch {args.batch}, {torch.get_num_threads()} threads, median of "
          f"{args.timing_rounds} alternating rounds): fastconvt {seconds['fastconvt'] * 1e3:.2f} "
          f"ms, torch {seconds['torch'] * 1e3:.2f} ms, speed-up "
          f"{seconds['torch'] / seconds['fastconvt']:.2f}x")
    print(f"wrote {args.out / 'samples.png'} and {args.out / 'losses.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
