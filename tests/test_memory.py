"""The workspace bound the README states: the kernels' own buffers (NumPy, so
visible to tracemalloc) stay within 64 MiB per call for every plan, on a layer whose
columns would need 128 MiB at once. Outputs, gradients and layout copies are torch's
allocations and not counted (the README says so)."""
import tracemalloc

import pytest
import torch

import fastconvt
from conftest import PLANS, plan_id

WORKSPACE_BYTES = 64 << 20


@pytest.mark.parametrize("plan", PLANS, ids=plan_id)
def test_workspace_stays_within_the_bound(plan):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 256, 32, 32, generator=g, requires_grad=True)
    w = torch.randn(256, 128, 4, 4, generator=g, requires_grad=True)
    columns = x.shape[0] * x.shape[2] * x.shape[3] * w[0].numel() * x.element_size()
    assert columns >= 2 * WORKSPACE_BYTES  # unchunked, the columns alone would not fit

    def call():
        out = fastconvt.conv_transpose2d(x, w, stride=2, padding=1)
        torch.autograd.grad(out, (x, w), torch.ones_like(out))

    with fastconvt.use_family(*plan):
        call()  # compile and load outside the trace
        tracemalloc.start()
        try:
            call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak <= WORKSPACE_BYTES, f"{peak / 2**20:.1f} MiB"
