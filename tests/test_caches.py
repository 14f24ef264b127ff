"""Every cache keyed by shape is bounded: a workload whose input size changes on
every call (variable-length audio, multi-scale inference) keeps a flat RSS."""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, json, os
    import torch, fastconvt
    from fastconvt import _dispatch, _plans, functional
    from fastconvt.kernels import direct, nhwc

    torch.set_num_threads(1)

    def rss_mib():
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    m = fastconvt.ConvTranspose2d(2, 3, 4, stride=2, padding=1)
    sizes = [(1 + i % 50, 1 + i // 50) for i in range(2000)]
    rss = []
    for round in range(5):  # 10,000 calls over 2,000 input sizes
        for h, w in sizes:
            y = m(torch.randn(1, 2, h, w))
            if round == 0:
                y.sum().backward()
        rss.append(rss_mib())
    print(json.dumps({
        "rss": rss, "calls": len(functional._calls), "choices": len(_dispatch._choices),
        "geometries": functional._cached_geometry.cache_info().currsize,
        "fitting": len(direct._FITTING), "tap_tables": nhwc.tap_table.cache_info().currsize}))
""")


def test_rss_stays_flat_over_ever_new_input_sizes(tmp_path):
    env = dict(os.environ, FASTCONVT_CACHE_DIR=str(tmp_path), FASTCONVT_AUTOTUNE="1")
    done = subprocess.run([sys.executable, "-P", "-c", SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


    report = json.loads(done.stdout.splitlines()[-1])
    # the README's sizes; 2,000 sizes (6,000 configurations of three maps) exceed each
    assert report["calls"] <= 1024 and report["geometries"] <= 1024
    assert report["choices"] <= 4096 and report["fitting"] <= 1024
    assert report["tap_tables"] <= 256
    rss = report["rss"]
    # after the first round every size has been seen: four more rounds, no growth
    assert rss[-1] - rss[1] < 8, rss
