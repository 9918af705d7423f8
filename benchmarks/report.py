"""Benchmark output: machine info, JSON, PNG plots and the Markdown summary.

Everything here reads the result dictionaries (benchmarks/case.py, benchmarks/matrix.py)
and nothing else, so `python -m benchmarks.report benchmarks/results/matrix.json` redraws
the plots and rewrites SUMMARY.md from a saved run. The knee and the bottleneck in the
summary are derived from the figures by benchmarks/analysis.py.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from benchmarks import analysis
from benchmarks.stats import SEGMENT_LABELS, SEGMENTS
from engines.evaluate import finite  # strict JSON: NaN/inf as null

RESULTS = Path(__file__).parent / "results"
SIZE_ORDER = ("480p", "720p", "1080p")
COLOURS = {"l_plane": "#8c8c8c", "wait_engine": "#d9d9d9", "colour_maths": "#4c9be8", "network": "#1f4e9c",
           "wait_output": "#f2d6a2", "publish": "#e8893c"}


def machine_info() -> dict:
    """CPU model, cores, memory, OS, Python and library versions, date (UTC)."""
    import cv2
    import onnxruntime
    import zmq

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    versions = {"numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                "pyzmq": zmq.__version__}
    try:
        import av

        versions["av"] = av.__version__
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": None if memory_gib is None else round(memory_gib, 1),
            "os": platform.platform(), "python": platform.python_version(), "versions": versions,
            "loadavg": [round(v, 2) for v in os.getloadavg()],
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def write_json(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(data), indent=1) + "\n")
    return path


# --- plots --------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def case_label(result: dict) -> str:
    c = result["case"]
    return f"{c['size']} x{c['streams']} {'rt' if c['realtime'] else 'max'}"


def _stage_bars(ax, results: list[dict]) -> None:
    labels = [case_label(r) for r in results]
    left = np.zeros(len(results))
    for segment in SEGMENTS:
        values = np.array([r["stages"]["mean_ms"].get(segment, 0.0) for r in results])
        ax.barh(labels, values, left=left, color=COLOURS[segment], label=SEGMENT_LABELS[segment])
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("mean latency, ms (capture → publish)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)


def plot_case(result: dict, path: Path) -> Path:
    """One case: latency histogram and stage breakdown side by side."""
    plt = _pyplot()
    fig, (hist, bars) = plt.subplots(1, 2, figsize=(11, 3.8))
    samples = result.get("latency_samples_ms") or []
    if samples:
        hist.hist(samples, bins=40, color="#1f4e9c")
        for q, style in (("p50", ":"), ("p99", "--")):
            if result["latency_ms"][q] is not None:
                hist.axvline(result["latency_ms"][q], color="k", linestyle=style, label=f"{q} "
                             f"{result['latency_ms'][q]:.1f} ms")
        hist.legend(fontsize=8)
    hist.set_xlabel("latency, ms (capture → publish)")
    hist.set_ylabel("frames")
    hist.set_title(case_label(result))
    _stage_bars(bars, [result])
    fig.tight_layout()
    return _save(fig, path)


def plot_latency_histograms(results: list[dict], path: Path) -> Path:
    """Latency distribution of the given cases, one step histogram each."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        samples = r.get("latency_samples_ms") or []
        if samples:
            ax.hist(samples, bins=40, histtype="step", linewidth=1.5,
                    label=f"{case_label(r)} (p99 {r['latency_ms']['p99']:.0f} ms)")
    ax.axvline(100, color="r", linestyle="--", linewidth=1, label="100 ms")
    ax.set_xlabel("latency, ms (capture → publish)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_fps_vs_streams(cases: list[dict], path: Path) -> Path:
    """Total fps against streams, per size; real-time (with the source rate) and max modes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, realtime in zip(axes, (True, False)):
        offered: dict[int, float] = {}
        for size in SIZE_ORDER:
            rows = sorted((r["case"]["streams"], r["fps"]["sustained"], r["fps"].get("offered"))
                          for r in cases if r["case"]["size"] == size and r["case"]["realtime"] == realtime)
            if not rows:
                continue
            ax.plot([n for n, _, _ in rows], [f for _, f, _ in rows], marker="o", label=size)
            offered.update({n: o for n, _, o in rows if o})
        if realtime and offered:
            ax.plot(sorted(offered), [offered[n] for n in sorted(offered)], linestyle=":", color="k",
                    linewidth=1, label="source rate")
        streams = sorted({r["case"]["streams"] for r in cases})
        ax.set_xscale("log", base=2)
        ax.set_xticks(streams, [str(n) for n in streams])
        ax.set_xlabel("streams")
        ax.set_ylabel("frames per second, all streams")
        ax.set_title("real time" if realtime else "as fast as possible")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_stage_breakdown(results: list[dict], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.6))
    _stage_bars(ax, results)
    fig.tight_layout()
    return _save(fig, path)


def plot_batch_scaling(results: list[dict], path: Path) -> Path:
    plt = _pyplot()
    rows = sorted((r["case"]["batch"], r["fps"]["sustained"], r["latency_ms"]["p99"] or 0) for r in results)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([b for b, _, _ in rows], [f for _, f, _ in rows], marker="o", color="#1f4e9c")
    ax.set_xlabel("engine max batch")
    ax.set_ylabel("frames per second", color="#1f4e9c")
    other = ax.twinx()
    other.plot([b for b, _, _ in rows], [p for _, _, p in rows], marker="s", color="#e8893c")
    other.set_ylabel("latency p99, ms", color="#e8893c")
    ax.set_xscale("log", base=2)
    ax.set_xticks([b for b, _, _ in rows], [str(b) for b, _, _ in rows])
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return path


def write_plots(matrix: dict, folder: Path) -> dict[str, str]:
    """Every plot of a matrix run; returns {name: file name}."""
    folder = Path(folder)
    cases = matrix.get("cases", [])
    out = {}
    single_rt = [r for r in cases if r["case"]["streams"] == 1 and r["case"]["realtime"]]
    if single_rt:
        out["latency"] = plot_latency_histograms(sorted(single_rt, key=_order), folder / "latency_hist.png").name
    if cases:
        out["fps"] = plot_fps_vs_streams(cases, folder / "fps_vs_streams.png").name
        realtime = sorted((r for r in cases if r["case"]["realtime"]), key=_order)
        out["stages"] = plot_stage_breakdown(realtime or cases, folder / "stage_breakdown.png").name
    if matrix.get("batch_scaling"):
        out["batch"] = plot_batch_scaling(matrix["batch_scaling"], folder / "batch_scaling.png").name
    return out


def _order(result: dict) -> tuple:
    c = result["case"]
    size = SIZE_ORDER.index(c["size"]) if c["size"] in SIZE_ORDER else len(SIZE_ORDER)
    return size, c["streams"], not c["realtime"], c.get("batch") or 0


def write_summary(matrix: dict, folder: Path, plots: dict[str, str]) -> Path:
    path = Path(folder) / "SUMMARY.md"
    path.write_text(summary_markdown(matrix, analysis.analyse(matrix), plots))
    return path


# --- Markdown summary -------------------------------------------------------------------
def _f(value, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{format(value, spec)}{unit}"


def _yes(flag) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def summary_markdown(matrix: dict, found: dict, plots: dict[str, str]) -> str:
    """SUMMARY.md: every figure in it is read from `matrix` or derived from it by `found`."""
    m = matrix.get("machine", {})
    v = m.get("versions", {})
    s = matrix.get("settings", {})
    lines = ["# chromacast benchmarks", "",
             f"Measured on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, {_f(m.get('memory_gib'), 'g')} GiB), "
             f"{m.get('os', '?')}, Python {m.get('python', '?')}, numpy {v.get('numpy', '?')}, "
             f"ONNX Runtime {v.get('onnxruntime', '?')}, OpenCV {v.get('opencv', '?')}; {m.get('date', '?')}"
             f"{' (quick matrix)' if matrix.get('quick') else ''}; load average at the start "
             f"{_f((m.get('loadavg') or [None])[0], '.1f')}.",
             f"Each case measures {_f(s.get('seconds'), 'g')} s after a {_f(s.get('warmup_s'), 'g')} s warm-up; "
             f"latency is capture → publish from the frame headers; one ZeroMQ subscriber on loopback "
             f"receives every frame. Raw figures: [matrix.json](matrix.json). Run again: `make bench`.", ""]
    lines += _goal_section(found.get("goal"))
    lines += _matrix_section(matrix, plots)
    lines += _scaling_section(matrix, found, plots)
    lines += _quality_section(matrix.get("quality"))
    return "\n".join(lines) + "\n"


def _goal_section(g: dict | None) -> list[str]:
    if not g:
        return ["## Goal", "", "The 720p single-stream real-time case was not run.", ""]
    c = g["checks"]
    ratio = (f"{_f(g['ratio'])}x ({_f(g['max_fps'])} fps as fast as possible vs {_f(g['seed_fps'], '.2f')} fps)"
             if g["ratio"] else "not measured")
    lines = ["## Goal: one 720p stream at 30 fps, p99 < 100 ms, no drops, >= 10x the seed approach", "",
             "| | measured | goal | met |", "|---|---|---|---|",
             f"| fps sustained | {_f(g['fps'])} | {_f(g['offered'], 'g')} | {_yes(c['sustained'])} |",
             f"| latency p50 / p99 | {_f(g['p50_ms'])} / {_f(g['p99_ms'])} ms | p99 < 100 ms | "
             f"{_yes(c['p99_under_100ms'])} |",
             f"| dropped frames | {g['dropped']} | 0 | {_yes(c['no_drops'])} |",
             f"| speed vs seed approach | {ratio} | >= 10x | {_yes(c['seed_ratio_10x'])} |", ""]
    verdict = "met" if c["met"] else "**not met**"
    busy = g["busy"].get(g["bottleneck"]) if g["bottleneck"] else None
    text = (f"Goal {verdict}. Busiest stage: **{g['bottleneck']}** ({_f(busy and 100 * busy, '.0f')}% busy). "
            f"Largest share of the latency: {_share(g, 'largest_share')}")
    if g["largest_work_share"] != g["largest_share"]:
        text += f"; the largest that is work rather than waiting: {_share(g, 'largest_work_share')}"
    lines.append(text + ".")
    return lines + [""]


def _share(g: dict, key: str) -> str:
    name = g[key]
    return f"{SEGMENT_LABELS.get(name, name)}, {_f(g['mean_ms'].get(name), '.1f')} ms ({_f(100 * g['shares'].get(name, 0), '.0f')}%)"


def _matrix_section(matrix: dict, plots: dict[str, str]) -> list[str]:
    cases = sorted(matrix.get("cases", []), key=_order)
    if not cases:
        return []
    lines = ["## Throughput and latency", "",
             "| size | streams | mode | fps (source) | p50 ms | p95 ms | p99 ms | dropped | mean batch | busiest | CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cases:
        c, lat = r["case"], r["latency_ms"]
        offered = f" ({_f(r['fps']['offered'], '.0f')})" if r["fps"].get("offered") else ""
        busy = r["busy"].get(r["bottleneck"]) if r["bottleneck"] else None
        cpu = (r.get("cpu") or {}).get("process_share")
        lines.append(f"| {c['size']} | {c['streams']} | {'real time' if c['realtime'] else 'max'} | "
                     f"{_f(r['fps']['sustained'])}{offered} | {_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | "
                     f"{r['frames']['window']['dropped']} | {_f(r['batch']['mean'], '.2f')} | "
                     f"{r['bottleneck']} {_f(busy and 100 * busy, '.0f')}% | {_f(cpu and 100 * cpu, '.0f')}% |")
    lines += ["", "busiest: the serial stage with the least idle time (ingest: a stream's decode + L plane; "
              "engine: network + its input resize; output: merge, JPEG + send). CPU: this process's share of all cores."]
    lines.append("")
    for key, title in (("fps", "fps vs streams"), ("latency", "latency histogram"), ("stages", "stage breakdown")):
        if key in plots:
            lines.append(f"![{title}]({plots[key]})")
    return lines + [""]


def _scaling_section(matrix: dict, found: dict, plots: dict[str, str]) -> list[str]:
    lines = ["## Scaling, knee and bottleneck", ""]
    for size, k in found.get("knees", {}).items():
        if k["realtime_knee"] is None:
            rt = f"real time keeps up with every stream count measured (up to {k['most_streams_kept_up']})"
        elif not k["most_streams_kept_up"]:
            rt = f"real time falls behind already with {k['realtime_knee']} stream(s)"
        else:
            rt = (f"real time keeps up with {k['most_streams_kept_up']} stream(s) and falls behind at "
                  f"{k['realtime_knee']}")
        tp = ("throughput still grows at the largest stream count" if k["throughput_knee"] is None else
              f"throughput stops growing after {k['throughput_knee']} stream(s)")
        lines.append(f"- **{size}**: {rt}; {tp} (peak {_f(k['peak_fps'])} fps with {k['peak_streams']}). "
                     f"Busiest stage there: {k['bottleneck']} ({_f(k['bottleneck_busy'] and 100 * k['bottleneck_busy'], '.0f')}%"
                     f" busy); largest work share: {SEGMENT_LABELS.get(k['largest_work_share'], '-')}.")
    b = found.get("bottleneck", {})
    if b.get("stage"):
        lines.append(f"- Across the as-fast-as-possible cases the busiest stage is **{b['stage']}** in "
                     f"{b['cases']} of {b['of']}.")
    batch = found.get("batch")
    if batch:
        first = matrix["batch_scaling"][0]["case"]
        lines += ["", f"Engine batch size ({first['streams']} streams of {first['size']}, as fast as possible):", "",
                  "| max batch | fps | p99 ms | mean batch | vs batch 1 |", "|---|---|---|---|---|"]
        for row in batch["rows"]:
            lines.append(f"| {row['batch']} | {_f(row['fps'])} | {_f(row['p99_ms'])} | {_f(row['mean_batch'], '.2f')} | "
                         f"{_f(row['speedup'], '.2f')}x |")
        if "batch" in plots:
            lines += ["", f"![batch scaling]({plots['batch']})"]
    cost = found.get("stabiliser")
    if cost:
        lines += ["", f"Colour stabiliser ({cost['size']}, one stream, as fast as possible): {_f(cost['fps_on'])} fps "
                      f"with it, {_f(cost['fps_off'])} fps without ({_f(cost['ratio'], '.2f')}x)."]
    seed = matrix.get("seed")
    if matrix.get("seed_error"):
        lines += ["", f"Seed approach not measured: {matrix['seed_error']}"]
    if seed:
        lines += ["", f"Seed approach ({seed['route']}, {seed['input']}, {seed['frames']} frames of the 720p clip): "
                      f"{_f(seed['fps'], '.2f')} fps."]
    return lines + [""]


def _quality_section(quality: dict | None) -> list[str]:
    lines = ["## Quality (`chromacast eval`)", ""]
    if not quality:
        return lines + ["Not measured in this run: `python -m benchmarks.matrix --quality` runs it "
                        "(needs the evaluation data), or put its JSON at benchmarks/results/quality.json.", ""]
    lines.append(f"Model {quality.get('model', '?')}, evaluated at short side {quality.get('short_side', '?')}.")
    images = {k: r for k, r in (quality.get("images") or {}).items() if r.get("count")}
    if images:
        lines += ["", "| images | n | PSNR dB | grey PSNR dB | colourfulness | ground truth |", "|---|---|---|---|---|---|"]
        for name, r in images.items():
            lines.append(f"| {name} | {r['count']} | {_f(r.get('psnr'), '.2f')} | {_f(r.get('psnr_grey'), '.2f')} | "
                         f"{_f(r.get('colourfulness'), '.1f')} | {_f(r.get('colourfulness_gt'), '.1f')} |")
    mean = quality.get("video_mean") or {}
    if mean.get("state_on"):
        lines += ["", "| videos (mean) | E_warp(DIS) x1e3 | CDC x1e3 | PSNR dB |", "|---|---|---|---|"]
        for variant in ("state_on", "state_off", "grey", "ground_truth", "carried", "stabilised"):
            r = mean.get(variant)
            if r is None:  # a report from before the stabiliser
                continue
            lines.append(f"| {variant.replace('_', ' ')} | {_f(r.get('ewarp') and r['ewarp'] * 1e3, '.3f')} | "
                         f"{_f(r.get('cdc') and r['cdc'] * 1e3, '.3f')} | {_f(r.get('psnr'), '.2f')} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    """Redraw the plots and SUMMARY.md from a saved matrix JSON, with the quality figures of
    quality.json beside it when there is one (a later `chromacast eval --json` than the matrix)."""
    argv = sys.argv[1:] if argv is None else argv
    source = Path(argv[0]) if argv else RESULTS / "matrix.json"
    try:
        matrix = json.loads(source.read_text())
        quality = source.parent / "quality.json"
        if quality.is_file():
            matrix["quality"] = json.loads(quality.read_text())
    except (OSError, ValueError) as exc:
        print(f"benchmarks.report: error: cannot read {exc.filename if isinstance(exc, OSError) else source}: "
              f"{exc}", file=sys.stderr)
        return 2
    plots = write_plots(matrix, source.parent)
    print(write_summary(matrix, source.parent, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
