"""A converted model trains under DistributedDataParallel (gloo, 2 processes on this
machine, spawned): after two steps its parameters equal those of the same run of
torch's unconverted model, on both ranks."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import fastconvt


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1, dtype=torch.float64),
                         nn.BatchNorm2d(4, dtype=torch.float64), nn.ReLU(),
                         nn.ConvTranspose2d(4, 2, 3, 1, 1, dtype=torch.float64))


def _train(rank, model):
    model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    for _ in range(2):
        x = torch.randn(3, 8, 5, 5, generator=g, dtype=torch.float64)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return [p.detach().clone() for p in model.module.parameters()]


def _worker(rank, world, out_dir):
    torch.set_num_threads(1)  # two processes on two cores
    # a file rendezvous: a free port picked beforehand can be taken by the time it is bound
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out_dir, "store"),
                            rank=rank, world_size=world)
    try:
        result = {"torch": _train(rank, _model()),
                  "fastconvt": _train(rank, fastconvt.convert(_model()))}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # torch 2.13's Gloo threads can abort the interpreter's finalization ("terminate called
    # without an active exception", about one run in five here): the results are saved,
    # so leave without it
    os._exit(0)


def test_ddp_training_matches_torchs(tmp_path):
    out_dir = str(tmp_path)
    mp.spawn(_worker, args=(2, out_dir), nprocs=2, join=True)
    results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
    for result in results:
        for ours, ref in zip(result["fastconvt"], result["torch"]):
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(results[0]["fastconvt"], results[1]["fastconvt"]):  # replicas agree
        torch.testing.assert_close(a, b, rtol=0, atol=0)
