"""The benchmark's report, from pytest-benchmark's JSON: one table per dtype and mode
(plain text and Markdown), geometric-mean speed-ups, and a bar chart of speed-ups.

Speed-up is the median of per-pair ratios torch / fastconvt over interleaved pairs (each
pair runs both sides back to back, so both see the same load), and the ms columns are each
side's median over those pairs; where a run has no pairs (``--paired-seconds 0``), each
side's median over its own block of rounds. GFLOP/s counts useful multiply-adds only
(``layers.flops``) and "% peak" relates them to a large torch.matmul of the same dtype
measured in the same run (its best round).
A "!" after a speed-up marks a row timed while other processes used over 10% of the CPUs.
A circular layer's torch column is torch's best equivalent (torch's ConvTranspose2d has no
circular mode): a zeros-mode transposed convolution with padding 0, its borders folded back
by hand; its GFLOP/s count the same multiply-adds as a zeros-mode layer of its shape.
"""
import json
import math
import re
import textwrap
from pathlib import Path

from .layers import LAYERS, MODES, flops

DTYPES = ("float32", "float64")
CASES = [(dtype, mode) for dtype in DTYPES for mode in MODES]  # table order
BUSY = 0.1  # share of the CPUs other processes may use before a timing is flagged
COLUMNS = ["layer", "torch ms", "fastconvt ms", "speed-up", "GFLOP/s", "% peak", "plan",
           "ORT ms"]


def load(path):
    return json.loads(Path(path).read_text())


def summarize(results):
    """Rows per (dtype, mode), peaks, geometric means and the cases below 1.0x."""
    median, family, busy, peak, pairs, peak_shape = {}, {}, {}, {}, {}, None
    models = {}  # (model, dtype) -> interleaved pairs
    twins = {}  # (twin, mode) -> interleaved pairs, the integer layer as "torch"
    for bench in results["benchmarks"]:
        info, seconds = bench["extra_info"], bench["stats"]["median"]
        others = info.get("others_cpu") or 0.0
        if info.get("impl") == "torch.matmul":
            busy["matmul"] = max(busy.get("matmul", 0.0), others)
            peak[info["dtype"]] = info["flops"] / bench["stats"]["min"] / 1e9  # best round
            peak_shape = "{0}x{1} @ {1}x{2}".format(*info["shape"])
            continue
        if info.get("impl") == "model":
            if info.get("paired"):
                models[info["model"], info["dtype"]] = info["paired"]
            continue
        if info.get("impl") == "twin":  # padding='same' against its integer twin
            twins[info["model"], info["mode"]] = info["paired"]
            continue
        key = (info["layer"], info["mode"], info["dtype"])
        median[key + (info["impl"],)] = seconds
        if info["impl"] in ("torch", "fastconvt"):
            busy[key] = max(busy.get(key, 0.0), others)
        if info["impl"] == "fastconvt":
            family[key] = info.get("family") or "-"
            if info.get("paired"):
                pairs[key] = info["paired"]
    tables, geomeans, slower, ceiling = {}, {}, [], {}
    for dtype, mode in CASES:
        rows = []
        for name, layer in LAYERS.items():
            key = (name, mode, dtype)
            torch_s, ours_s, ort_s = (median.get(key + (impl,))
                                      for impl in ("torch", "fastconvt", "onnxruntime"))
            paired = pairs.get(key)
            if paired:
                torch_s, ours_s = paired["torch"], paired["fastconvt"]
            if torch_s is None and ours_s is None:
                continue
            row = dict(layer=name, torch=torch_s, fastconvt=ours_s, onnxruntime=ort_s,
                       family=family.get(key, "-"), speedup=None, gflops=None, peak=None,
                       busy=busy.get(key, 0.0) > BUSY)
            if ours_s:
                row["gflops"] = flops(layer, mode) / ours_s / 1e9
            rates = [flops(layer, mode) / t / 1e9 for t in (torch_s, ours_s, ort_s) if t]
            ceiling[dtype] = max([ceiling.get(dtype, peak.get(dtype, 0.0))] + rates)
            if torch_s and ours_s:
                row["speedup"] = paired["ratio"] if paired else torch_s / ours_s
                if row["speedup"] < 1.0:
                    slower.append((name, dtype, mode, row["speedup"]))
            rows.append(row)
        if rows:
            tables[dtype, mode] = rows
    for (dtype, _), rows in tables.items():  # "% peak": of the best rate the run saw
        for row in rows:
            if row["gflops"] and ceiling.get(dtype):
                row["peak"] = 100 * row["gflops"] / ceiling[dtype]
    for dtype, mode in CASES:
        rows = tables.get((dtype, mode), [])
        ratios = [row["speedup"] for row in rows if row["speedup"]]
        if ratios:
            geomeans[dtype, mode] = math.exp(sum(map(math.log, ratios)) / len(ratios))
    return dict(tables=tables, peak=peak, ceiling=ceiling, peak_shape=peak_shape,
                geomeans=geomeans, models=models, twins=twins,
                slower=slower, busy_peak=busy.get("matmul", 0.0) > BUSY, paired=bool(pairs))


def _cells(row, with_ort):
    def ms(seconds):
        return "-" if seconds is None else f"{seconds * 1e3:.3f}" if seconds < 0.1 \
            else f"{seconds * 1e3:.1f}"

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    cells = [row["layer"], ms(row["torch"]), ms(row["fastconvt"]),
             ("-" if row["speedup"] is None else f"{row['speedup']:.2f}x")
             + ("!" if row["busy"] else ""),
             num(row["gflops"], ".2f" if (row["gflops"] or 0) < 10 else ".1f"),
             num(row["peak"], ".1f"), row["family"]]
    return cells + [ms(row["onnxruntime"])] if with_ort else cells


def _preamble(results, summary):
    info = results.get("machine_info", {}).get("fastconvt_bench", {})
    lines = [f"CPU: {info.get('cpu_model', '?')}; {info.get('threads', '?')} threads; "
             f"torch {info.get('torch', '?')} (products: {info.get('torch_blas', '?')}, "
             f"oneDNN matmul {'available' if info.get('onednn_product') else 'unavailable'}), "
             f"numba {info.get('numba', '?')} "
             f"(threading layer {info.get('numba_threading_layer', '?')}), "
             f"onnxruntime {info.get('onnxruntime', '?')}"]
    lines.append("speed-up: " + ("median ratio torch / fastconvt over interleaved pairs "
                                 "(ms: each side's median over them; bench/paired.py times "
                                 "one cell the same way)" if summary.get("paired") else
                                 "torch's median time over fastconvt's, each in its own block "
                                 "of rounds"))
    if info.get("malloc"):
        lines.append(f"malloc: {info['malloc']} (bench/allocator.py)")
    if info.get("forced_family"):
        lines.append(f"fastconvt kernel family forced to {info['forced_family']!r} (--family)")
    peak = summary["peak"]
    if peak:
        lines.append(f"Reference peak (torch.matmul {summary['peak_shape']}, best round): "
                     + ", ".join(f"{dtype} {value:.1f} GFLOP/s" for dtype, value in peak.items())
                     + (" (!: measured while the machine was busy)" if summary["busy_peak"]
                        else ""))
        lines.append("% peak: of the larger of that matmul and the fastest rate any row "
                     "reached in this run (counting useful multiply-adds, so a Winograd row "
                     "may set it), so it never reads above 100: "
                     + ", ".join(f"{dtype} {value:.1f} GFLOP/s"
                                 for dtype, value in summary["ceiling"].items()))
    folded = list(dict.fromkeys(row["layer"] for rows in summary["tables"].values()
                                for row in rows if LAYERS[row["layer"]].padding_mode == "circular"))
    if folded:
        lines.append(f"torch for {', '.join(folded)}: torch's ConvTranspose2d has no circular "
                     "padding_mode, so its column times F.conv_transpose2d with padding=0 plus "
                     "a hand-written circular fold of the borders and the bias (bench/"
                     "test_layers.py: TorchCircularConvTranspose2d, checked against the adjoint "
                     "of nn.Conv2d(padding_mode='circular'))")
    compile_s = results.get("fastconvt_compile_seconds")
    if compile_s:
        def fmt(value):
            return f"{value:.2f} s" if isinstance(value, (int, float)) else str(value)
        lines.append("JIT compile, fastconvt.warmup() in a fresh process: "
                     f"{fmt(compile_s.get('no_cache'))} without cache (FASTCONVT_NO_CACHE=1), "
                     f"{fmt(compile_s.get('cached'))} from Numba's on-disk cache")
    return lines


def _epilogue(results, summary):
    lines = [f"geometric mean speed-up, {dtype} {mode}: {value:.2f}x"
             for (dtype, mode), value in summary["geomeans"].items()]
    lines += [f"{model}, {dtype}: torch {pairs['torch'] * 1e3:.1f} ms, fastconvt "
              f"{pairs['fastconvt'] * 1e3:.1f} ms, speed-up {pairs['ratio']:.2f}x "
              f"(95% {pairs['low']:.2f}-{pairs['high']:.2f}, {pairs['pairs']} pairs)"
              for (model, dtype), pairs in summary.get("models", {}).items()]
    lines += [f"padding='same' {twin} float32 {mode}: integer twin {pairs['torch'] * 1e3:.2f} ms, "
              f"'same' {pairs['fastconvt'] * 1e3:.2f} ms, ratio {pairs['ratio']:.3f} "
              f"(95% {pairs['low']:.3f}-{pairs['high']:.3f}, {pairs['pairs']} pairs)"
              for (twin, mode), pairs in summary.get("twins", {}).items()]
    by_layer = {}
    order = list(LAYERS)
    for name, dtype, mode, speedup in sorted(summary["slower"], key=lambda s: order.index(s[0])):
        by_layer.setdefault(name, []).append(f"{dtype} {mode} {speedup:.2f}x")
    lines.append("below 1.0x: " + ("; ".join(f"{name} ({', '.join(cases)})"
                                            for name, cases in by_layer.items()) or "none"))
    rows = [row for table in summary["tables"].values() for row in table]
    flagged = sum(row["busy"] for row in rows)
    if flagged:
        lines.append(f"!: other processes used over {BUSY:.0%} of the CPUs while {flagged} of "
                     f"the {len(rows)} rows were timed; re-run on a quiet machine before "
                     "quoting them")
    skipped = results.get("machine_info", {}).get("fastconvt_bench", {}).get("onnx_skipped")
    reasons = {}
    for name, reason in (skipped or {}).items():
        reasons.setdefault(reason, []).append(name)
    for reason, names in reasons.items():
        which = "any layer" if len(names) == len(LAYERS) else ", ".join(names)
        lines.append(f"ONNX Runtime not measured for {which}: {reason}")
    return lines


def _with_ort(rows):
    return any(row["onnxruntime"] is not None for row in rows)


def _wrap(lines):
    return [wrapped for line in lines
            for wrapped in textwrap.wrap(line, 100, subsequent_indent="    ",
                                         break_on_hyphens=False)]


def text(results, summary):
    """The report as plain text (what ``python -m bench`` prints)."""
    out = _wrap(_preamble(results, summary))
    for (dtype, mode), rows in summary["tables"].items():
        with_ort = _with_ort(rows)
        header = COLUMNS if with_ort else COLUMNS[:-1]
        body = [_cells(row, with_ort) for row in rows]
        widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
        out += ["", f"{dtype}, {mode}"]
        for line in [header] + body:
            out.append("  ".join(cell.ljust(width) if i in (0, 6) else cell.rjust(width)
                                 for i, (cell, width) in enumerate(zip(line, widths))).rstrip())
    out += [""] + _wrap(_epilogue(results, summary))
    return "\n".join(out)


def markdown(results, summary):
    """The report as Markdown (bench/results/latest.md)."""
    out = ["# fastconvt benchmark", ""] + [f"- {line}" for line in _preamble(results, summary)]
    out += ["- GFLOP/s: useful multiply-adds x 2 "
            "(forward+backward: 3x a forward); % peak: of the ceiling above; plan: "
            "fastconvt's plan (family/form/product; forward+backward adds the backward's) "
            "as measured in this run; ORT: ONNX Runtime"]
    for (dtype, mode), rows in summary["tables"].items():
        with_ort = _with_ort(rows)
        header = COLUMNS if with_ort else COLUMNS[:-1]
        out += ["", f"## {dtype}, {mode}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join([":---"] + ["---:"] * 5 + [":---"] + ["---:"] * with_ort) + "|"]
        out += ["| " + " | ".join(_cells(row, with_ort)) + " |" for row in rows]
    out += [""] + [f"- {line}" for line in _epilogue(results, summary)]
    return "\n".join(out) + "\n"


def plot(results, summary, path):
    """A grouped bar chart of speed-ups per layer (one bar per dtype and mode), log y."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    layers = [name for name in LAYERS
              if any(row["layer"] == name and row["speedup"]
                     for rows in summary["tables"].values() for row in rows)]
    if not layers:
        return False
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(layers) + 3), 6.5))
    width = 0.8 / len(CASES)
    for i, (dtype, mode) in enumerate(CASES):
        speedup = {row["layer"]: row["speedup"]
                   for row in summary["tables"].get((dtype, mode), [])}
        values = [speedup.get(name) or math.nan for name in layers]
        geomean = summary["geomeans"].get((dtype, mode))
        label = f"{dtype} {mode}" + (f" (geomean {geomean:.2f}x)" if geomean else "")
        ax.bar([x + (i - (len(CASES) - 1) / 2) * width for x in range(len(layers))], values,
               width, label=label)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    low, high = min(low, 0.8), max(high, 1.25)  # keep the 1.0x line in view
    ax.set_ylim(low, high)
    crowded = high / low >= 30  # then label only the 2s and 5s between powers of ten

    def minor(value, _):
        leading = f"{value:.0e}"[0]
        return f"{value:g}x" if not crowded or leading in "25" else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("speed-up over torch (torch time / fastconvt time)")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=40, ha="right", fontsize=8)
    info = results.get("machine_info", {}).get("fastconvt_bench", {})
    ax.set_title(f"fastconvt vs torch {info.get('torch', '')}, {info.get('threads', '?')} "
                 f"threads, {info.get('cpu_model', '')}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def cpu_slug(cpu):
    """A file name for a CPU model: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")


def write(json_path, out_dir):
    """Write latest.md and speedups.png next to the JSON, and the Markdown again as
    ``<cpu model>.md`` (kept in the repository: one report per CPU measured); return
    the text report."""
    results = load(json_path)
    summary = summarize(results)
    out_dir = Path(out_dir)
    report_md = markdown(results, summary)
    (out_dir / "latest.md").write_text(report_md)
    info = results.get("machine_info", {}).get("fastconvt_bench", {})
    timed = {(b["extra_info"].get("layer"), b["extra_info"].get("mode"),
              b["extra_info"].get("dtype")) for b in results["benchmarks"]
             if b["extra_info"].get("impl") == "fastconvt"}
    whole = timed >= {(name, mode, dtype) for name in LAYERS for dtype, mode in CASES}
    if whole and info.get("cpu_model") and not info.get("forced_family"):
        (out_dir / f"{cpu_slug(info['cpu_model'])}.md").write_text(report_md)
    report = text(results, summary)
    try:
        if plot(results, summary, out_dir / "speedups.png"):
            report += f"\nchart: {out_dir / 'speedups.png'}"
    except ImportError as error:
        report += f"\nno chart ({error})"
    return report
