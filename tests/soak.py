"""A long training run on a converted model (``make soak``): after warm-up the RSS
stays flat, torch's thread count is unchanged and the dispatcher's caches stop
growing. Prints the figures; exits 1 if one of them drifts.

    python tests/soak.py [steps]   (default 10,000)
"""
import gc
import os
import sys
import time

import torch
from torch import nn

import fastconvt
from fastconvt import _dispatch, functional

RSS_GROWTH_MIB = 16  # allowed after warm-up: allocator noise, not a leak


def rss_mib():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def model():
    """A small converted DCGAN-style generator, ending in a circular layer."""
    return nn.Sequential(fastconvt.convert(nn.Sequential(
        nn.ConvTranspose2d(16, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1), nn.ReLU())),
        fastconvt.ConvTranspose2d(8, 3, 4, 2, 1, padding_mode="circular"), nn.Tanh())


def main(steps):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    net = model()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    warm_up = min(500, steps // 4)
    start = time.perf_counter()
    for step in range(steps):
        batch = 4 + step % 3  # a few batch sizes, as a last partial batch gives
        x = torch.randn(batch, 16, 1, 1)
        if step % 2:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = net(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == warm_up:
            rss_warm, caches_warm = rss_mib(), (len(functional._calls), len(_dispatch._choices))
    rss_end, caches_end = rss_mib(), (len(functional._calls), len(_dispatch._choices))
    print(f"soak: {steps} steps in {time.perf_counter() - start:.0f} s; RSS after "
          f"{warm_up} steps {rss_warm:.1f} MiB, at the end {rss_end:.1f} MiB; torch threads "
          f"{threads} -> {torch.get_num_threads()}; cached calls and plans "
          f"{caches_warm} -> {caches_end}; loss {loss.item():.4f}")
    ok = (rss_end - rss_warm < RSS_GROWTH_MIB and torch.get_num_threads() == threads
          and caches_end == caches_warm and torch.isfinite(loss))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
