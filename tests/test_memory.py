"""The workspace bound the README states: the kernels' own buffers (NumPy, so
visible to tracemalloc) stay within 64 MiB per call for every plan, on a layer whose
columns would need 128 MiB at once. Outputs, gradients and layout copies are torch's
allocations and not counted (the README says so)."""
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import fastconvt
from fastconvt import kernels
from conftest import PLANS, plan_id

WORKSPACE_BYTES = 64 << 20
BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("plan", PLANS, ids=plan_id)
def test_workspace_stays_within_the_bound(plan):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 256, 32, 32, generator=g, requires_grad=True)
    w = torch.randn(256, 128, 4, 4, generator=g, requires_grad=True)
    columns = x.shape[0] * x.shape[2] * x.shape[3] * w[0].numel() * x.element_size()
    assert columns >= 2 * WORKSPACE_BYTES  # unchunked, the columns alone would not fit

    with fastconvt.use_family(*plan):
        peak = _traced_peak(x, w)
    assert peak <= WORKSPACE_BYTES, f"{peak / 2**20:.1f} MiB"


def _traced_peak(x, w):
    """The NumPy (tracemalloc) peak of one forward and backward of the k4/s2/p1 layer,
    after a first call that compiles and loads outside the trace."""
    def call():
        out = fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
        torch.autograd.grad(out, (x, w), torch.ones_like(out))

    call()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# The README's bound on a whole call, torch's allocations included: 64 MiB of workspace,
# as much again for oneDNN's product (it returns its own result, copied into ours), one
# copy of the input and of the output gradient, two of the weight (its layout, its per-tap
# arrangement) and, for a padding mode other than zeros, one of the output. Measured as the
# rise of the resident set's peak in a fresh process
# (bench/memory.py), on a layer whose columns alone would break the bound.
CALL_SCRIPT = """
import sys, json
sys.path.insert(0, {bench!r})
import torch, fastconvt, memory
x = torch.randn({batch}, 16, 64, 64)
w = torch.randn(16, 128, 4, 4)
if {channels_last!r}:
    x = x.contiguous(memory_format=torch.channels_last)
x.requires_grad_(); w.requires_grad_()
gy = torch.randn({batch}, 128, 128, 128)
def step():
    out = fastconvt.conv_transpose2d(x, w, stride=2, padding=1, padding_mode={mode!r})
    return [out, *torch.autograd.grad(out, (x, w), gy)]
peaks = {{}}
for plan in {plans!r}:
    with fastconvt.use_family(*plan):
        step()
        peaks["-".join(p for p in plan if p)] = memory.peak_extra(step)
print(json.dumps(peaks))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("mode, channels_last", [("zeros", False), ("zeros", True),
                                                 ("circular", False)], ids=str)
def test_whole_call_stays_within_the_readme_bound(mode, channels_last):
    batch = 8 if mode == "zeros" else 16  # (the bound counts the output once more)
    script = CALL_SCRIPT.format(bench=str(BENCH), channels_last=channels_last, mode=mode,
                                plans=PLANS, batch=batch)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", GLIBC_TUNABLES="")
    done = subprocess.run([sys.executable, "-P", "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.splitlines()[-1])
    mib = 2 ** 20
    operands = (batch * 16 * 64 * 64 + 2 * 16 * 128 * 16 + batch * 128 * 128 * 128) * 4 / mib
    output = batch * 128 * 128 * 128 * 4 / mib if mode != "zeros" else 0
    bound = 2 * WORKSPACE_BYTES / mib + operands + output
    assert batch * 128 * 16 * 64 * 64 * 4 / mib > bound  # unchunked columns would break it
    over = {plan: round(peak) for plan, peak in peaks.items() if peak > bound}
    assert not over, f"MiB above the bound {bound:.0f}: {over}"


def test_gemm_subpixel_only_within_the_workspace_bound(monkeypatch):
    """The sub-pixel forward holds a whole image's columns: where they exceed the
    workspace budget, the column form (which also splits output channels) computes the
    same result instead."""
    g = kernels.gemm
    x, w = np.ones((2, 16, 10, 10)), np.ones((16, 8, 4, 4))  # DCGAN-like: sub-pixel pays
    used = []
    original = g._subpixel_conv_transpose2d
    monkeypatch.setattr(g, "_subpixel_conv_transpose2d",
                        lambda *args: used.append(True) or original(*args))
    roomy = g.conv_transpose2d(x, w, None, (2, 2), (1, 1), (1, 1), 1, (20, 20))
    assert used == [True]
    tight = g.conv_transpose2d(x, w, None, (2, 2), (1, 1), (1, 1), 1, (20, 20),
                               workspace_bytes=4096)  # one image's columns: 93 KB
    assert used == [True]
    np.testing.assert_allclose(tight, roomy)


def test_winograd_is_a_candidate_only_where_one_image_fits():
    """Winograd holds one image's transforms whole: the planner offers it only where they
    (and the transformed filters) fit the workspace."""
    from fastconvt import _plans

    def forms(shapes, out_hw):
        plans = _plans.candidates("conv_transpose2d", np.float32, shapes,
                                  ((1, 1), (1, 1), (1, 1), 1), out_hw, ("gemm", "", "mm"))
        return {p[1] for p in plans}

    # one 256x256 image with 32 channels each way: transforms of 2 x 32 MiB
    assert not kernels.winograd.fits((256, 256), 32, 32, 4)
    assert "winograd" not in forms(((1, 32, 256, 256), (32, 32, 3, 3)), (256, 256))
    assert kernels.winograd.fits((32, 32), 64, 64, 4)
    assert "winograd" in forms(((8, 64, 32, 32), (64, 64, 3, 3)), (32, 32))


def test_the_dispatchers_plan_keeps_the_bound_where_one_image_exceeds_it():
    """One 256x256 image of a 64->64 k4/s2 layer: its sub-pixel buffers alone would take
    about 80 MiB, its unchunked columns 256 MiB; the plan the dispatcher picks stays within
    64 MiB of NumPy workspace (the weight's per-tap copy on top)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 256, 256, generator=g, requires_grad=True)
    w = torch.randn(64, 64, 4, 4, generator=g, requires_grad=True)

    peak = _traced_peak(x, w)
    assert peak <= WORKSPACE_BYTES + 2 * w.numel() * w.element_size(), f"{peak / 2**20:.1f} MiB"
