"""Threading study: what a Numba parallel region costs next to torch's OpenMP pool.

``python bench/threading_study.py`` runs one child process per (Numba threading
layer, OpenMP wait policy) and prints tables of medians over repeated runs.
Nothing is written under the repository (the Numba cache goes to a temp dir).

The two pools: torch's intra-op pool is its bundled ``torch/lib/libgomp.so.1``
(MKL and oneDNN run on it too); Numba's 'omp' layer links the system
``libgomp.so.1.0.0``, a second copy with a second pool. Both copies read
``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` when loaded, so a policy row changes
both pools (for the 'workqueue' and 'tbb' layers it changes torch's only).

Per child, measured in-process (times are per call, median of many calls):

  a   tiny prange region (2, 8, 64 iterations of ``a[i] += 1``) in a tight loop;
      ``ser`` is the same loop compiled without ``parallel`` (dispatch baseline)
  b   the tiny region right after a torch op (512x512 matmul; 256k-element add)
  c   the torch op right after a tiny region, minus the same op right after itself
  d   alternation [conv2d 64->64 3x3 on (8,64,32,32); Numba kernel ~1 ms over 64
      rows], iteration time minus (conv alone + kernel alone), for four per-call
      strategies: par (2+2 threads), n1 (numba.set_num_threads(1) around the
      kernel), ser (kernel compiled serial), t1 (torch.set_num_threads(1) around
      the kernel); plus CPU time of torch's and Numba's worker threads
      (per-thread CPU clocks, ns) beyond what the same loops use alone
  tail  CPU a pool's worker threads burn after one op when the caller then
      sleeps: the spin-wait tail (torch add / conv, Numba tiny region)
  set numba/torch get_/set_num_threads per-call costs, and the next torch op
      after a torch.set_num_threads(1) -> (2) round trip

``a``-``c`` run with torch 2 + Numba 2 threads ("t2n2") and torch 2 + Numba 1.
Other processes share the machine: each child records the CPU used by *other*
processes while it ran (``ext``, in cores, from /proc/stat), and the parent
waits (bounded) for a quiet machine before each child.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_LIB = os.path.join(os.path.dirname(HERE), ".venv", "lib")

# "omp-nf": the omp layer with Numba's first parallel launch before `import torch`
LAYERS = ["omp", "omp-nf", "workqueue", "tbb"]
NF_POLICIES = ("default", "passive")   # omp-nf is a control: run it under these only
POLICIES = {
    "default": {},
    "spin0": {"GOMP_SPINCOUNT": "0"},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}
POLICY_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_PROC_BIND", "GOMP_CPU_AFFINITY")
WORK_SHAPE = (64, 4096)   # float32 rows of the ~1 ms kernel
WORK_REPS = 80            # sweeps of the kernel over its rows (see --calibrate)


# ----------------------------------------------------------------------------- machine load

def cpu_jiffies():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def busy_cores(seconds=1.0):
    b0, t0 = cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / max(1, t1 - t0) * os.cpu_count()


# ----------------------------------------------------------------------------- child

def thread_clock(tid):
    """Linux CPU-time clock id of thread ``tid`` of this process (MAKE_THREAD_CPUCLOCK,
    CPUCLOCK_SCHED). Unlike /proc/.../schedstat, which is only brought up to date at
    scheduler ticks for a thread running on another CPU, it is exact."""
    return ((~tid) << 3) | 6


def thread_cpu_ns():
    """{tid: ns on CPU} for every thread of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = time.clock_gettime_ns(thread_clock(int(tid)))
        except (OSError, ValueError):
            pass
    return out


def summary(ns):
    """median and quartiles in microseconds of a list of nanosecond samples."""
    q = statistics.quantiles(ns, n=4) if len(ns) > 1 else [ns[0]] * 3
    return {"med": q[1] / 1e3, "p25": q[0] / 1e3, "p75": q[2] / 1e3, "n": len(ns)}


def child(opts):
    import numpy as np
    import numba
    from numba import njit, prange

    jiff0 = cpu_jiffies()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    pc = time.perf_counter_ns
    main_tid = threading.get_native_id()
    res = {"pid": os.getpid(), "load_start": os.getloadavg()[0]}
    scale = opts.scale
    jit = dict(cache=True, nogil=True)

    @njit(parallel=True, **jit)
    def tiny_par(a):
        for i in prange(a.shape[0]):
            a[i] += 1.0

    @njit(**jit)
    def tiny_ser(a):
        for i in range(a.shape[0]):
            a[i] += 1.0

    @njit(parallel=True, fastmath=True, **jit)
    def work_par(a, b, out, reps):
        for i in prange(a.shape[0]):
            for _ in range(reps):
                for j in range(a.shape[1]):
                    out[i, j] = out[i, j] * np.float32(0.999) + a[i, j] * b[i, j]

    @njit(fastmath=True, **jit)
    def work_ser(a, b, out, reps):
        for i in range(a.shape[0]):
            for _ in range(reps):
                for j in range(a.shape[1]):
                    out[i, j] = out[i, j] * np.float32(0.999) + a[i, j] * b[i, j]

    tiny = {n: np.zeros(n) for n in (2, 8, 64)}
    a64 = tiny[64]
    early_tids = set()
    if opts.numba_first:   # Numba's omp pool binds libgomp before torch is loaded
        tiny_par(a64)
        early_tids = set(thread_cpu_ns()) - {main_tid}

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    xm, ym, om = torch.randn(512, 512), torch.randn(512, 512), torch.empty(512, 512)
    xa, ya, oa = torch.randn(1 << 18), torch.randn(1 << 18), torch.empty(1 << 18)
    xc, wc = torch.randn(8, 64, 32, 32), torch.randn(64, 64, 3, 3)

    def mm():
        torch.matmul(xm, ym, out=om)

    def add():
        torch.add(xa, ya, out=oa)

    def conv():
        F.conv2d(xc, wc, padding=1)

    for _ in range(5):
        mm(), add(), conv()
    torch_tids = set(thread_cpu_ns()) - {main_tid} - early_tids

    wa = np.random.rand(*WORK_SHAPE).astype(np.float32)
    wb, wo = wa.copy(), wa.copy()
    tiny_par(a64), tiny_ser(a64)
    work_par(wa, wb, wo, WORK_REPS), work_ser(wa, wb, wo, WORK_REPS)
    numba_tids = (set(thread_cpu_ns()) - torch_tids - {main_tid}) | early_tids
    res["layer"] = numba.threading_layer()
    with open("/proc/self/maps") as f:
        res["gomp_libs"] = sorted({line.split()[-1] for line in f if "libgomp" in line})
    res["torch_threads_after_numba_launch"] = torch.get_num_threads()
    torch.set_num_threads(2)
    res["threads"] = {"torch": sorted(torch_tids), "numba": sorted(numba_tids)}

    def groups(d0, d1):
        """CPU ns spent between two thread_cpu_ns() snapshots, per pool."""
        out = {"main": 0, "torch": 0, "numba": 0}
        for tid, ns in d1.items():
            key = "main" if tid == main_tid else "numba" if tid in numba_tids else "torch"
            out[key] += ns - d0.get(tid, 0)
        return out

    def per_call(fn, n, before=None, cap_ns=0.6e9):
        """n timed calls of fn (each after before()), stopping early after cap_ns
        when other processes make every call slow."""
        out = []
        n = max(5, int(n * scale))
        start = pc()
        for i in range(n):
            if before is not None:
                before()
            t0 = pc()
            fn()
            t1 = pc()
            out.append(t1 - t0)
            if i >= 20 and t1 - start > cap_ns:
                break
        return out

    def t64():
        tiny_par(a64)

    # ---------------------------------------------------------------- a, b, c
    for combo, nb in (("t2n2", 2), ("t2n1", 1)):
        numba.set_num_threads(nb)
        r = res.setdefault(combo, {})
        for n, arr in tiny.items():
            r[f"a{n}"] = summary(per_call(lambda: tiny_par(arr), 2000))
        r["a_ser"] = summary(per_call(lambda: tiny_ser(a64), 2000))
        b_mm, b_add, c_mm, c_add, c_mm0, c_add0 = [], [], [], [], [], []
        for _ in range(2):   # two interleaved rounds against drift
            b_mm += per_call(t64, 100, before=mm)
            b_add += per_call(t64, 600, before=add)
            c_mm += per_call(mm, 100, before=t64)
            c_mm0 += per_call(mm, 100, before=mm)
            c_add += per_call(add, 600, before=t64)
            c_add0 += per_call(add, 600, before=add)
        r["b_mm"], r["b_add"] = summary(b_mm), summary(b_add)
        r["c_mm"], r["c_mm0"] = summary(c_mm), summary(c_mm0)
        r["c_add"], r["c_add0"] = summary(c_add), summary(c_add0)
    numba.set_num_threads(2)

    # ---------------------------------------------------------------- d
    def k_par():
        work_par(wa, wb, wo, WORK_REPS)

    def k_n1():
        prev = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            work_par(wa, wb, wo, WORK_REPS)
        finally:
            numba.set_num_threads(prev)

    def k_ser():
        work_ser(wa, wb, wo, WORK_REPS)

    def k_t1():
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            work_par(wa, wb, wo, WORK_REPS)
        finally:
            torch.set_num_threads(prev)

    strategies = {"par": k_par, "n1": k_n1, "ser": k_ser, "t1": k_t1}
    n_iter = max(3, int(10 * scale))
    samples = {"conv": [], **{f"{s}_alone": [] for s in strategies},
               **{f"{s}_alt": [] for s in strategies},
               **{f"{s}_alt_conv": [] for s in strategies},
               **{f"{s}_alt_k": [] for s in strategies}}
    cpu = {k: {"main": 0, "torch": 0, "numba": 0, "wall": 0, "iters": 0}
           for k in ["conv", *(f"{s}_alone" for s in strategies), *(f"{s}_alt" for s in strategies)]}

    def account(key, d0, d1, wall):
        g = groups(d0, d1)
        c = cpu[key]
        for k in g:
            c[k] += g[k]
        c["wall"] += wall
        c["iters"] += n_iter

    d_start = pc()
    for _ in range(3):
        if pc() - d_start > 6e9:   # a loaded machine: one or two rounds are enough
            break
        d0, w0 = thread_cpu_ns(), pc()
        for _ in range(n_iter):
            t0 = pc()
            conv()
            samples["conv"].append(pc() - t0)
        account("conv", d0, thread_cpu_ns(), pc() - w0)
        for s, k in strategies.items():
            d0, w0 = thread_cpu_ns(), pc()
            for _ in range(n_iter):
                t0 = pc()
                k()
                samples[f"{s}_alone"].append(pc() - t0)
            account(f"{s}_alone", d0, thread_cpu_ns(), pc() - w0)
            d0, w0 = thread_cpu_ns(), pc()
            for _ in range(n_iter):
                t0 = pc()
                conv()
                t1 = pc()
                k()
                t2 = pc()
                samples[f"{s}_alt"].append(t2 - t0)
                samples[f"{s}_alt_conv"].append(t1 - t0)
                samples[f"{s}_alt_k"].append(t2 - t1)
            account(f"{s}_alt", d0, thread_cpu_ns(), pc() - w0)
    res["d"] = {k: summary(v) for k, v in samples.items()}
    res["d_cpu"] = {k: {g: v[g] / v["iters"] / 1e3 for g in ("main", "torch", "numba", "wall")}
                    for k, v in cpu.items()}   # microseconds per iteration

    # ---------------------------------------------------------------- on-CPU during a region
    clocks = {tid: thread_clock(tid) for tid in thread_cpu_ns() if tid != main_tid}

    def pool_ns():
        t = n = 0
        for tid, clk in clocks.items():
            try:
                v = time.clock_gettime_ns(clk)
            except OSError:
                continue
            if tid in numba_tids:
                n += v
            else:
                t += v
        return t, n

    def oncpu(first, second, n):
        """CPU of torch-created / numba-created threads during `second` right
        after `first`, as a fraction of `second`'s wall time (medians)."""
        ft, fn_, walls = [], [], []
        for _ in range(max(5, int(n * scale))):
            first()
            c0 = pool_ns()
            t0 = pc()
            second()
            t1 = pc()
            c1 = pool_ns()
            ft.append((c1[0] - c0[0]) / (t1 - t0))
            fn_.append((c1[1] - c0[1]) / (t1 - t0))
            walls.append(t1 - t0)
        return {"torch": statistics.median(ft), "numba": statistics.median(fn_),
                "wall_us": statistics.median(walls) / 1e3}
    res["oncpu"] = {"k_after_conv": oncpu(conv, k_par, 40),
                    "t1_after_conv": oncpu(conv, k_t1, 40),
                    "n1_after_conv": oncpu(conv, k_n1, 40),
                    "k_after_sleep": oncpu(lambda: time.sleep(0.02), k_par, 15),
                    "conv_after_k": oncpu(k_par, conv, 40),
                    "conv_after_conv": oncpu(conv, conv, 40)}

    # ---------------------------------------------------------------- spin tails
    def tail(fn, gap=0.025, n=12):
        fn()
        time.sleep(gap)
        d0 = thread_cpu_ns()
        for _ in range(n):
            fn()
            time.sleep(gap)
        g = groups(d0, thread_cpu_ns())
        return {k: v / n / 1e3 for k, v in g.items()}   # us per op
    res["tail"] = {"torch_add": tail(add), "torch_conv": tail(conv), "numba_tiny": tail(t64),
                   "numba_work": tail(k_par)}

    # ---------------------------------------------------------------- set_num_threads costs
    def loop_cost(fn, n=20000):
        n = max(100, int(n * scale))
        t0 = pc()
        for _ in range(n):
            fn()
        return (pc() - t0) / n / 1e3   # us per call

    def noop():
        pass

    def nb_toggle():
        numba.set_num_threads(1)
        numba.set_num_threads(2)

    def nb_ctx():   # get, set, run nothing, restore: the per-call pattern
        prev = numba.get_num_threads()
        numba.set_num_threads(1)
        numba.set_num_threads(prev)

    def th_toggle():
        torch.set_num_threads(1)
        torch.set_num_threads(2)

    costs = {"noop": loop_cost(noop),
             "numba_get": loop_cost(numba.get_num_threads),
             "numba_set_same": loop_cost(lambda: numba.set_num_threads(2)),
             "numba_set_1_2": loop_cost(nb_toggle) / 2,
             "numba_get_set_restore": loop_cost(nb_ctx),
             "torch_get": loop_cost(torch.get_num_threads),
             "torch_set_same": loop_cost(lambda: torch.set_num_threads(2), 2000),
             "torch_set_1_2": loop_cost(th_toggle, 2000) / 2}
    res["costs"] = costs
    res["after_toggle"] = {
        "add": summary(per_call(add, 500, before=th_toggle)),
        "add0": summary(per_call(add, 500, before=add)),
        "conv": summary(per_call(conv, 30, before=th_toggle)),
        "conv0": summary(per_call(conv, 30, before=conv)),
        "tiny_after_nb_toggle": summary(per_call(t64, 2000, before=nb_toggle)),
        "tiny0": summary(per_call(t64, 2000)),
    }

    jiff1 = cpu_jiffies()
    wall = time.perf_counter() - wall0
    own = time.process_time() - cpu0
    busy = (jiff1[0] - jiff0[0]) / max(1, jiff1[1] - jiff0[1]) * os.cpu_count()
    res["wall_s"] = wall
    res["own_cores"] = own / wall
    res["ext_cores"] = max(0.0, busy - own / wall)
    res["load_end"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------- parent

def child_env(layer, policy, cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env.update(POLICIES[policy])
    env["NUMBA_THREADING_LAYER"] = layer.split("-")[0]
    env["NUMBA_CACHE_DIR"] = cache_dir
    if layer == "tbb":   # measurement only: the library cannot rely on this
        env["LD_LIBRARY_PATH"] = VENV_LIB + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    return env


def run_child(layer, policy, cache_dir, opts):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--scale", str(opts.scale)]
    if layer.endswith("-nf"):
        cmd.append("--numba-first")
    p = subprocess.run(cmd, env=child_env(layer, policy, cache_dir), capture_output=True,
                       text=True, timeout=600)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(f"[{layer}/{policy}] failed rc={p.returncode}\n{p.stderr[-2000:]}\n")
    return None


def wait_quiet(max_wait, threshold):
    """Wait up to max_wait s until other processes use < threshold cores."""
    t0 = time.time()
    while True:
        b = busy_cores(1.0)
        if b < threshold or time.time() - t0 > max_wait:
            return b
        time.sleep(2.0)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def cell(values, fmt="{:.1f}"):
    """'median (min-max)' over repeated runs."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = fmt.format(statistics.median(values))
    if len(values) == 1:
        return m
    return f"{m} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def get(r, *path):
    for p in path:
        if r is None or p not in r:
            return None
        r = r[p]
    return r


def report(all_results, reps, max_ext):
    keys = sorted(all_results, key=lambda k: (LAYERS.index(k[0]), list(POLICIES).index(k[1])))
    out = []
    results = {}
    for k in keys:   # quiet runs only, or all runs (row marked *) when none was quiet
        quiet = [r for r in all_results[k] if r["ext_cores"] <= max_ext]
        results[k] = quiet or all_results[k]
    mark = {k: "*" if not [r for r in all_results[k] if r["ext_cores"] <= max_ext] else ""
            for k in keys}

    def table(title, cols, source=None):
        source = source or results
        out.append(f"\n## {title}")
        widths = [18] + [max(len(c[0]), 8 if not c[0] else 13) for c in cols]
        out.append("  ".join(h.ljust(w) for h, w in zip(["layer/policy"] + [c[0] for c in cols], widths)))
        for k in keys:
            rs = source.get(k)
            if not rs:
                continue
            row = [f"{k[0]}/{k[1]}{mark[k] if source is results else ''}"]
            for c in cols:
                try:
                    row.append(cell([c[1](r) for r in rs], *c[2:]))
                except (KeyError, TypeError):
                    row.append("-")
            out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))

    out.append(f"# cells: median over the runs (min-max across runs); each run's value is itself "
               f"a median of many calls. Times in microseconds unless noted. Only runs during which "
               f"other processes used <= {max_ext} cores are used; '*' = no such run, all used.")
    out.append("\n## which pool runs the kernel: libgomp copies mapped; kernel threads (fraction of "
               "its wall time on torch-created / Numba-created threads, after a 20 ms sleep)")
    for k in keys:
        r = all_results[k][0]
        libs = ", ".join("torch/lib/" + os.path.basename(p) if "torch" in p else p
                         for p in r.get("gomp_libs", []))
        o = r["oncpu"]["k_after_sleep"]
        out.append(f"{k[0] + '/' + k[1]:<18} {libs:<62} torch-wk {o['torch']:.2f}  numba-wk {o['numba']:.2f}")
    table("machine: CPU used by other processes during each run (cores of 2), 1-min load; all runs", [
        ("ext cores", lambda r: r["ext_cores"], "{:.2f}"),
        ("load start", lambda r: r["load_start"], "{:.2f}"),
        ("run wall s", lambda r: r["wall_s"], "{:.0f}")],
        source={k: all_results[k] for k in keys})
    out.append("runs used / runs: " + ", ".join(f"{k[0]}/{k[1]} {len(results[k]) if not mark[k] else 0}"
                                                 f"/{len(all_results[k])}" for k in keys))
    for combo in ("t2n2", "t2n1"):
        table(f"(a)-(c) tiny region, {combo} (torch {combo[1]} threads, numba {combo[3]})", [
            ("a2", lambda r, c=combo: get(r, c, "a2", "med")),
            ("a8", lambda r, c=combo: get(r, c, "a8", "med")),
            ("a64", lambda r, c=combo: get(r, c, "a64", "med")),
            ("a ser", lambda r, c=combo: get(r, c, "a_ser", "med"), "{:.2f}"),
            ("b after mm", lambda r, c=combo: get(r, c, "b_mm", "med")),
            ("b after add", lambda r, c=combo: get(r, c, "b_add", "med")),
            ("c mm +", lambda r, c=combo: get(r, c, "c_mm", "med") - get(r, c, "c_mm0", "med")),
            ("c add +", lambda r, c=combo: get(r, c, "c_add", "med") - get(r, c, "c_add0", "med")),
            ("mm alone", lambda r, c=combo: get(r, c, "c_mm0", "med"), "{:.0f}"),
            ("add alone", lambda r, c=combo: get(r, c, "c_add0", "med"), "{:.0f}")])
    table("(d) alternation [conv2d; ~1 ms kernel]: ms per iteration, and overhead = iter - "
          "(conv alone + kernel alone) in ms", [
              ("conv alone ms", lambda r: r["d"]["conv"]["med"] / 1e3, "{:.2f}"),
              ("par alone ms", lambda r: r["d"]["par_alone"]["med"] / 1e3, "{:.2f}"),
              *[(f"{s} iter ms", lambda r, s=s: r["d"][f"{s}_alt"]["med"] / 1e3, "{:.2f}")
                for s in ("par", "n1", "ser", "t1")],
              *[(f"{s} overhead ms", lambda r, s=s: (r["d"][f"{s}_alt"]["med"] - r["d"]["conv"]["med"]
                                                    - r["d"][f"{s}_alone"]["med"]) / 1e3, "{:+.2f}")
                for s in ("par", "n1", "ser", "t1")]])
    table("(d) parts: conv inside the alternation, kernel inside it, kernel alone (ms)", [
        ("par conv in alt", lambda r: r["d"]["par_alt_conv"]["med"] / 1e3, "{:.2f}"),
        ("par k in alt", lambda r: r["d"]["par_alt_k"]["med"] / 1e3, "{:.2f}"),
        ("n1 k alone", lambda r: r["d"]["n1_alone"]["med"] / 1e3, "{:.2f}"),
        ("ser k alone", lambda r: r["d"]["ser_alone"]["med"] / 1e3, "{:.2f}"),
        ("t1 k alone", lambda r: r["d"]["t1_alone"]["med"] / 1e3, "{:.2f}"),
        ("t1 conv in alt", lambda r: r["d"]["t1_alt_conv"]["med"] / 1e3, "{:.2f}")])

    def excess(r, s, pool):
        """pool CPU per alternation iteration beyond its CPU in the two loops alone (us)."""
        c = r["d_cpu"]
        return c[f"{s}_alt"][pool] - c["conv"][pool] - c[f"{s}_alone"][pool]
    table("(4) on-CPU time of worker threads during one call, as a fraction of that call's wall "
          "time (torch-wk: threads torch's first ops created; numba-wk: threads Numba's first "
          "launch created; with the omp layers the kernel itself runs on torch-wk)", [
              ("k after conv: t/n", lambda r: r["oncpu"]["k_after_conv"]["torch"], "{:.2f}"),
              ("", lambda r: r["oncpu"]["k_after_conv"]["numba"], "{:.2f}"),
              ("k after sleep: t/n", lambda r: r["oncpu"]["k_after_sleep"]["torch"], "{:.2f}"),
              ("", lambda r: r["oncpu"]["k_after_sleep"]["numba"], "{:.2f}"),
              ("t1-k after conv t/n", lambda r: r["oncpu"]["t1_after_conv"]["torch"], "{:.2f}"),
              ("", lambda r: r["oncpu"]["t1_after_conv"]["numba"], "{:.2f}"),
              ("n1-k after conv t/n", lambda r: r["oncpu"]["n1_after_conv"]["torch"], "{:.2f}"),
              ("conv after k: t/n", lambda r: r["oncpu"]["conv_after_k"]["torch"], "{:.2f}"),
              ("", lambda r: r["oncpu"]["conv_after_k"]["numba"], "{:.2f}"),
              ("k ms: after conv", lambda r: r["oncpu"]["k_after_conv"]["wall_us"] / 1e3, "{:.2f}"),
              ("after sleep", lambda r: r["oncpu"]["k_after_sleep"]["wall_us"] / 1e3, "{:.2f}")])
    table("(4) (d) loops: worker CPU per iteration beyond the same work run alone (us); "
          "cpu/wall = CPU of all threads / wall (2 = both cores busy)", [
              ("par torch-wk", lambda r: excess(r, "par", "torch"), "{:+.0f}"),
              ("par numba-wk", lambda r: excess(r, "par", "numba"), "{:+.0f}"),
              ("par cpu/wall", lambda r: sum(r["d_cpu"]["par_alt"][g] for g in ("main", "torch", "numba"))
               / r["d_cpu"]["par_alt"]["wall"], "{:.2f}"),
              ("ser cpu/wall", lambda r: sum(r["d_cpu"]["ser_alt"][g] for g in ("main", "torch", "numba"))
               / r["d_cpu"]["ser_alt"]["wall"], "{:.2f}")])
    table("(4) spin tail: CPU all worker threads burn per op when the caller then sleeps 25 ms "
          "(us per op)", [
              ("torch add", lambda r: r["tail"]["torch_add"]["torch"] + r["tail"]["torch_add"]["numba"],
               "{:.0f}"),
              ("torch conv", lambda r: r["tail"]["torch_conv"]["torch"] + r["tail"]["torch_conv"]["numba"],
               "{:.0f}"),
              ("numba tiny", lambda r: r["tail"]["numba_tiny"]["torch"] + r["tail"]["numba_tiny"]["numba"],
               "{:.0f}"),
              ("numba 1ms kernel", lambda r: r["tail"]["numba_work"]["torch"] + r["tail"]["numba_work"]["numba"],
               "{:.0f}")])
    table("(3) per-call costs (us): get/set_num_threads; torch op right after "
          "torch.set_num_threads(1)->(2) vs after itself", [
              ("nb get", lambda r: r["costs"]["numba_get"] - r["costs"]["noop"], "{:.2f}"),
              ("nb set same", lambda r: r["costs"]["numba_set_same"] - r["costs"]["noop"], "{:.2f}"),
              ("nb set 1<->2", lambda r: r["costs"]["numba_set_1_2"] - r["costs"]["noop"] / 2, "{:.2f}"),
              ("nb get+set+restore", lambda r: r["costs"]["numba_get_set_restore"] - r["costs"]["noop"],
               "{:.2f}"),
              ("torch get", lambda r: r["costs"]["torch_get"] - r["costs"]["noop"], "{:.2f}"),
              ("torch set same", lambda r: r["costs"]["torch_set_same"] - r["costs"]["noop"], "{:.1f}"),
              ("torch set 1<->2", lambda r: r["costs"]["torch_set_1_2"] - r["costs"]["noop"] / 2, "{:.1f}"),
              ("add after tgl", lambda r: r["after_toggle"]["add"]["med"], "{:.0f}"),
              ("add after add", lambda r: r["after_toggle"]["add0"]["med"], "{:.0f}"),
              ("conv after tgl", lambda r: r["after_toggle"]["conv"]["med"], "{:.0f}"),
              ("conv after conv", lambda r: r["after_toggle"]["conv0"]["med"], "{:.0f}"),
              ("tiny after nb 1<->2", lambda r: r["after_toggle"]["tiny_after_nb_toggle"]["med"]),
              ("tiny after tiny", lambda r: r["after_toggle"]["tiny0"]["med"])])
    loaded = {k: [r for r in all_results[k] if r["ext_cores"] > max_ext] for k in keys}
    if any(loaded.values()):
        table(f"the same under external load: runs during which other processes used > {max_ext} "
              "cores (their number is 'ext')", [
                  ("ext", lambda r: r["ext_cores"], "{:.2f}"),
                  ("a2 t2n2", lambda r: r["t2n2"]["a2"]["med"]),
                  ("a2 t2n1", lambda r: r["t2n1"]["a2"]["med"]),
                  ("b add t2n2", lambda r: r["t2n2"]["b_add"]["med"]),
                  ("par ovh ms", lambda r: (r["d"]["par_alt"]["med"] - r["d"]["conv"]["med"]
                                            - r["d"]["par_alone"]["med"]) / 1e3, "{:+.2f}"),
                  ("conv alone ms", lambda r: r["d"]["conv"]["med"] / 1e3, "{:.2f}"),
                  ("par iter ms", lambda r: r["d"]["par_alt"]["med"] / 1e3, "{:.2f}"),
                  ("ser iter ms", lambda r: r["d"]["ser_alt"]["med"] / 1e3, "{:.2f}"),
                  ("n1 iter ms", lambda r: r["d"]["n1_alt"]["med"] / 1e3, "{:.2f}")], source=loaded)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=3, help="runs per configuration (default 3)")
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--numba-first", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="max seconds to wait before each run for other processes to use "
                         "< --quiet-cores cores (default 20)")
    ap.add_argument("--quiet-cores", type=float, default=0.2)
    ap.add_argument("--max-ext", type=float, default=0.3,
                    help="tables use runs during which other processes used at most this many "
                         "cores, when there are any (default 0.3)")
    ap.add_argument("--json", help="also write raw results here")
    ap.add_argument("--from-json", help="only print the tables of earlier --json files "
                                        "(comma-separated; their runs are pooled)")
    opts = ap.parse_args()
    if opts.child:
        return child(opts)
    if opts.from_json:   # several files: their runs are pooled
        results, reps = {}, 0
        for path in opts.from_json.split(","):
            with open(path) as f:
                raw = json.load(f)
            reps += raw["reps"]
            for k, v in raw["results"].items():
                results.setdefault(tuple(k.split("/")), []).extend(v)
        print(report(results, reps, opts.max_ext))
        return
    layers = opts.layers.split(",")
    policies = opts.policies.split(",")
    results = {}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="threading_study_") as cache_dir:
        for layer in layers:   # warm the Numba cache once per layer, untimed
            run_child(layer, "default", cache_dir, argparse.Namespace(scale=0.02))
        for rep in range(opts.reps):
            for layer in layers:
                for policy in policies:
                    if layer.endswith("-nf") and policy not in NF_POLICIES and opts.policies == ",".join(POLICIES):
                        continue
                    ext_before = wait_quiet(opts.quiet_wait, opts.quiet_cores)
                    r = run_child(layer, policy, cache_dir, opts)
                    if r is None:
                        continue
                    if r["layer"] != layer.split("-")[0]:
                        sys.stderr.write(f"asked for {layer}, got {r['layer']}; skipped\n")
                        continue
                    r["ext_before"] = ext_before
                    results.setdefault((layer, policy), []).append(r)
                    print(f"[{time.time() - t_start:6.0f}s] rep {rep} {layer}/{policy}: "
                          f"wall {r['wall_s']:.0f}s, other processes {r['ext_cores']:.2f} cores, "
                          f"load {r['load_start']:.2f}", file=sys.stderr, flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"reps": opts.reps, "results": {"/".join(k): v for k, v in results.items()}}, f)
    print(report(results, opts.reps, opts.max_ext))


if __name__ == "__main__":
    main()
