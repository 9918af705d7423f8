"""`chromacast eval --reference first-frame|FILE`: colour from a reference, against none.

Videos (`--reference first-frame`): each clip is colorized three ways, each with the recurrent
state on and the colour stabiliser after it, as `chromacast colorize` runs: without a reference
("none"), with the clip's own first frame in colour as the reference ("reference"), and with
another clip's first frame ("unrelated", the next clip in name order); "hints_only" is
"reference" without the blend after the network (engines/reference.blend), to show what the
hint inputs alone do with the model being scored. Scored per variant: PSNR,
the hue measure (hue_balanced), E_warp and CDC, and the share of grid cells that took a colour.
Images (`--reference FILE`): every image colorized without and with FILE as the reference.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from engines import colour, metrics
from engines.backend import DEFAULT_MODEL, Engine, open_engine
from engines.evaluate import (VIDEO_EXTS, EvalError, SequenceScore, colorize_one, image_datasets, read_frames,
                              resize_short_side)
from engines.reference import FeatureModel, ReferenceError, ReferenceMatcher, blend, load_reference
from engines.stabilise import ColourStabiliser, StabiliserSettings

log = logging.getLogger("chromacast.eval")

VIDEO_VARIANTS = ("none", "reference", "unrelated", "hints_only")


def first_frame(path: Path, short_side: int) -> np.ndarray:
    frame = next(read_frames(path, short_side, 1), None)
    if frame is None:
        raise EvalError(f"no frame could be read from {path}")
    return frame


def evaluate_video(engine: Engine, features: FeatureModel, path: Path, unrelated: np.ndarray, short_side: int,
                   limit: int | None, net: int, stabiliser: StabiliserSettings) -> dict:
    own = first_frame(path, short_side)
    mine = ReferenceMatcher(own, features)
    matchers = {"none": None, "reference": mine, "unrelated": ReferenceMatcher(unrelated, features),
                "hints_only": mine}
    runs = {v: (ColourStabiliser(stabiliser, engine.info.ab_stride), SequenceScore(), metrics.HueScore(), [])
            for v in VIDEO_VARIANTS}
    flow, prev_l8, states, frames = metrics.DisFlow(), None, {}, 0
    for gt in read_frames(path, short_side, limit):
        l8 = colour.to_l8(gt)
        if not states:
            size = engine.network_size(l8.shape[1], l8.shape[0], net)
            states = {v: engine.new_state(size) for v in VIDEO_VARIANTS}
        pair = flow.pair(prev_l8, l8) if prev_l8 is not None else None
        l_net = colour.network_l8(l8, states["none"].size)
        matches: dict = {}
        for v, matcher in matchers.items():
            stab, score, hue, coverage = runs[v]
            hints = match = None
            if matcher is not None:
                match = matches.get(id(matcher)) or matcher.match(l_net)
                matches[id(matcher)] = match
                coverage.append(match.coverage)
                hints = [[match.hint()]] if match.mask.any() else None
            ab = engine.predict([l_net], [states[v]], hints)[0]
            if match is not None and v != "hints_only":
                ab = blend(ab, match)
            out = engine.merge(l8, stab.apply(l_net, ab))
            score.add(out, pair, gt)
            hue.add(out, gt)
        prev_l8, frames = l8, frames + 1
    result: dict = {"frames": frames}
    for v, (_, score, hue, coverage) in runs.items():
        result[v] = {**score.result(), "hue_balanced": hue.result()["hue_balanced"],
                     "coverage": float(np.mean(coverage)) if coverage else None}
    return result


def evaluate_images(engine: Engine, matcher: ReferenceMatcher, paths: list[Path], short_side: int, net: int) -> dict:
    rows, hue_none, hue_ref, coverage = [], metrics.HueScore(), metrics.HueScore(), []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("skipping unreadable image %s", p)
            continue
        gt = resize_short_side(img, short_side)
        l8 = colour.to_l8(gt)
        size = engine.network_size(l8.shape[1], l8.shape[0], net)
        match = matcher.match(colour.network_l8(l8, size))
        coverage.append(match.coverage)
        plain = colorize_one(engine, l8, net)
        ab = engine.predict([colour.network_l8(l8, size)], [engine.new_state(size)],
                            [[match.hint()]] if match.hint() else None)[0]
        hinted = engine.merge(l8, blend(ab, match))
        hue_none.add(plain, gt)
        hue_ref.add(hinted, gt)
        rows.append((metrics.psnr(plain, gt), metrics.psnr(hinted, gt)))
    if not rows:
        return {"count": 0}
    psnr_none, psnr_ref = np.mean(np.array(rows), axis=0)
    return {"count": len(rows), "none": {"psnr": psnr_none, "hue_balanced": hue_none.result()["hue_balanced"]},
            "reference": {"psnr": psnr_ref, "hue_balanced": hue_ref.result()["hue_balanced"],
                          "coverage": float(np.mean(coverage))}}


def video_mean(videos: dict[str, dict]) -> dict:
    scored = [r for r in videos.values() if "none" in r]
    out = {v: {k: float(np.mean([r[v][k] for r in scored if r[v][k] is not None] or [np.nan]))
               for k in scored[0][v]} for v in VIDEO_VARIANTS} if scored else {}
    return out


def run(args: argparse.Namespace) -> dict:
    """The reference evaluation for `chromacast eval` arguments (engines/evaluate.parse_args)."""
    mode = str(args.reference)
    on_videos = mode == "first-frame"
    if args.short_side < 32:
        raise EvalError("--short-side must be at least 32")
    folder = args.videos if on_videos else args.images
    if not folder.is_dir():
        raise EvalError(f"{'video' if on_videos else 'image'} folder not found: {folder}")
    try:
        reference = None if on_videos else load_reference(args.reference)
    except ReferenceError as exc:
        raise EvalError(str(exc)) from None
    stabiliser = StabiliserSettings(args.stabiliser_strength, args.stabiliser_tolerance, args.stabiliser_flow)
    engine = open_engine(args.model, kind=args.engine)
    features = FeatureModel()
    net = args.network_short_side or engine.info.default_short_side
    started = time.time()
    report: dict = {"model": str(args.model or DEFAULT_MODEL), "reference": mode, "short_side": args.short_side,
                    "network_short_side": net, "images": {}, "videos": {}}
    try:
        if on_videos:
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTS)
            if not paths:
                raise EvalError(f"no videos in {folder}")
            for i, path in enumerate(paths):
                log.info("video: %s", path.name)
                unrelated = first_frame(paths[(i + 1) % len(paths)], args.short_side)
                report["videos"][path.stem] = evaluate_video(engine, features, path, unrelated, args.short_side,
                                                             args.limit, net, stabiliser)
            report["video_mean"] = video_mean(report["videos"])
        else:
            matcher = ReferenceMatcher(reference, features)
            for name, paths in image_datasets(folder).items():
                report["images"][name] = evaluate_images(engine, matcher, paths[:args.limit], args.short_side, net)
    finally:
        engine.close()
    report["seconds"] = round(time.time() - started, 1)
    return report


def print_table(report: dict) -> None:
    def f(v, spec=".2f"):
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)

    if report["videos"]:
        print(f"{'videos':<28}{'n':>5}  {'PSNR none/ref/unrel/hints':<28}{'hue_bal none/ref/unrel/hints':<30}"
              f"{'E_warp x1e3 none/ref/unrel/hints':<34}{'cells ref/unrel':<16}")
        for name, r in dict(report["videos"], mean=report.get("video_mean") or {}).items():
            if "none" not in r:
                continue
            ps = "/".join(f(r[v]["psnr"]) for v in VIDEO_VARIANTS)
            hb = "/".join(f(r[v]["hue_balanced"]) for v in VIDEO_VARIANTS)
            ew = "/".join(f(r[v]["ewarp"] * 1e3) for v in VIDEO_VARIANTS)
            cv = "/".join(f(r[v]["coverage"]) for v in VIDEO_VARIANTS[1:3])
            print(f"{name:<28}{r.get('frames', ''):>5}  {ps:<28}{hb:<30}{ew:<34}{cv:<16}")
    for name, r in report["images"].items():
        if r.get("count"):
            print(f"{name:<28}{r['count']:>5}  PSNR {f(r['none']['psnr'])} -> {f(r['reference']['psnr'])}  "
                  f"hue_balanced {f(r['none']['hue_balanced'])} -> {f(r['reference']['hue_balanced'])}  "
                  f"cells {f(r['reference']['coverage'])}")
