"""Conclusions drawn from a matrix run: the goal check, the knee, the bottleneck.

Pure functions of the matrix JSON (benchmarks/matrix.py), so the summary states only what
the figures show, and the same JSON always gives the same conclusions.
"""
from __future__ import annotations

from collections import Counter

from benchmarks import stats

HEADLINE = ("720p", 1)


def find(cases: list[dict], size: str, streams: int, realtime: bool) -> dict | None:
    for r in cases:
        c = r["case"]
        if c["size"] == size and c["streams"] == streams and c["realtime"] == realtime:
            return r
    return None


def case_keeps_up(result: dict) -> bool:
    w = result["frames"]["window"]
    return stats.keeps_up(result["fps"]["sustained"], result["fps"]["offered"] or 0.0, w["dropped"], w["in"])


def largest_share(result: dict, work_only: bool = False) -> str | None:
    """The segment with the largest share of the mean latency (work only: no waiting)."""
    shares = {k: v for k, v in result["stages"]["share"].items()
              if not (work_only and k.startswith("wait_"))}
    return max(shares, key=shares.get) if shares else None


def goal(matrix: dict) -> dict | None:
    """The issue's goal on the headline case (720p, one stream, real time); the seed ratio
    compares the same stream as fast as possible with the seed approach."""
    cases = matrix.get("cases", [])
    realtime = find(cases, *HEADLINE, True)
    if realtime is None:
        return None
    fastest = find(cases, *HEADLINE, False)
    seed_fps = (matrix.get("seed") or {}).get("fps")
    max_fps = fastest["fps"]["sustained"] if fastest else None
    ratio = max_fps / seed_fps if max_fps and seed_fps else None
    window = realtime["frames"]["window"]
    return {"fps": realtime["fps"]["sustained"], "offered": realtime["fps"]["offered"],
            "p50_ms": realtime["latency_ms"]["p50"], "p99_ms": realtime["latency_ms"]["p99"],
            "dropped": window["dropped"], "max_fps": max_fps, "seed_fps": seed_fps, "ratio": ratio,
            "checks": stats.goal_check(realtime["fps"]["sustained"], realtime["fps"]["offered"] or 0.0,
                                       realtime["latency_ms"]["p99"], window["dropped"], ratio),
            "bottleneck": realtime["bottleneck"], "busy": realtime["busy"],
            "largest_share": largest_share(realtime), "largest_work_share": largest_share(realtime, True),
            "shares": realtime["stages"]["share"], "mean_ms": realtime["stages"]["mean_ms"]}


def knees(matrix: dict) -> dict[str, dict]:
    """Per size: where real-time playback stops keeping up, where throughput stops growing,
    and the busiest stage there."""
    cases = matrix.get("cases", [])
    out = {}
    for size in sorted({r["case"]["size"] for r in cases}, key=_size_key):
        realtime = sorted((r for r in cases if r["case"]["size"] == size and r["case"]["realtime"]),
                          key=lambda r: r["case"]["streams"])
        fastest = sorted((r for r in cases if r["case"]["size"] == size and not r["case"]["realtime"]),
                         key=lambda r: r["case"]["streams"])
        rt_knee = stats.realtime_knee([(r["case"]["streams"], case_keeps_up(r)) for r in realtime])
        tp_knee = stats.throughput_knee([(r["case"]["streams"], r["fps"]["sustained"]) for r in fastest])
        kept = [r["case"]["streams"] for r in realtime if case_keeps_up(r)
                and (rt_knee is None or r["case"]["streams"] < rt_knee)]
        at_knee = next((r for r in realtime if r["case"]["streams"] == rt_knee), None) or (
            realtime[-1] if realtime else None)
        peak = max(fastest, key=lambda r: r["fps"]["sustained"], default=None)
        out[size] = {
            "realtime_knee": rt_knee, "most_streams_kept_up": max(kept, default=None),
            "throughput_knee": tp_knee,
            "peak_fps": peak["fps"]["sustained"] if peak else None,
            "peak_streams": peak["case"]["streams"] if peak else None,
            "bottleneck": at_knee["bottleneck"] if at_knee else None,
            "bottleneck_busy": at_knee["busy"].get(at_knee["bottleneck"]) if at_knee and at_knee["bottleneck"] else None,
            "largest_work_share": largest_share(at_knee, True) if at_knee else None,
        }
    return out


def overall_bottleneck(matrix: dict) -> tuple[str | None, int, int]:
    """The stage most often the busiest across the as-fast-as-possible cases (the ones that
    push every stage to its limit): (stage, cases where it is, cases)."""
    fastest = [r for r in matrix.get("cases", []) if not r["case"]["realtime"] and r["bottleneck"]]
    if not fastest:
        return None, 0, 0
    stage, count = Counter(r["bottleneck"] for r in fastest).most_common(1)[0]
    return stage, count, len(fastest)


def batch_effect(matrix: dict) -> dict | None:
    """Throughput by engine max batch, relative to batch 1."""
    rows = sorted((r["case"]["batch"], r["fps"]["sustained"], r["latency_ms"]["p99"], r["batch"]["mean"])
                  for r in matrix.get("batch_scaling", []) if r["case"].get("batch"))
    if not rows:
        return None
    base = next((f for b, f, _, _ in rows if b == 1), None)
    best = max(rows, key=lambda row: row[1])
    return {"rows": [{"batch": b, "fps": f, "p99_ms": p, "mean_batch": m,
                      "speedup": (f / base) if base else None} for b, f, p, m in rows],
            "best_batch": best[0], "best_fps": best[1], "best_speedup": best[1] / base if base else None}


def stabiliser_cost(matrix: dict) -> dict | None:
    """The headline stream as fast as possible with the colour stabiliser (the matrix's cases)
    and without it (`stabiliser_off`): fps either way and their ratio."""
    off = matrix.get("stabiliser_off")
    on = find(matrix.get("cases", []), *HEADLINE, False)
    if not off or not on:
        return None
    fps_on, fps_off = on["fps"]["sustained"], off["fps"]["sustained"]
    return {"size": HEADLINE[0], "fps_on": fps_on, "fps_off": fps_off, "ratio": fps_on / fps_off if fps_off else None}


def analyse(matrix: dict) -> dict:
    stage, count, of = overall_bottleneck(matrix)
    return {"goal": goal(matrix), "knees": knees(matrix),
            "bottleneck": {"stage": stage, "cases": count, "of": of}, "batch": batch_effect(matrix),
            "stabiliser": stabiliser_cost(matrix)}


def _size_key(size: str) -> int:
    digits = "".join(ch for ch in size if ch.isdigit())
    return int(digits) if digits else 0
