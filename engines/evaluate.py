"""`chromacast eval`: colour quality and temporal stability of a model, against the grey baseline.

Every image or video frame is resized to the evaluation short side (256 by default);
its own L is what the model colorizes, and the result is compared with the colour
original at that resolution. The grey baseline is the same L with ab = 0.

Images (one dataset per subfolder): PSNR, colourfulness and its gap to the ground
truth's, and the hue measure (engines/metrics.HueScore: hue_hits, hue_balanced, per sector),
also for a constant sepia tint (a=6, b=14) as a reference row. The "hinted" variant gives each
image three box hints holding the ground truth's mean colour there and reports the ΔE between
the output's mean colour in each box and the colour asked for, as users get it (the engine gives
hinted regions their colour after the network) and from the network alone. `--sheet OUT.png` writes a
contact sheet (ground truth | grey | output | hinted output) for a sample of each set.
Videos: the same per frame, plus E_warp(DIS) and CDC (engines/metrics.py)
with the recurrent state carried from frame to frame ("state on") and reset before
every frame ("state off"), for the grey baseline and for the ground truth itself.

The videos also score a reference that no model can beat on E_warp: the first output
frame's colours copied along the input's own optical flow to every later frame
("carried"; on the current L). Its E_warp is the floor that the L channel alone sets,
so `flicker_left` = (on − carried) / (off − carried) is the share of the per-frame
model's colour flicker that the state leaves; `ewarp_ratio` = on / off includes the floor.

"stabilised" is state on followed by the flow-guided colour stabiliser (engines/stabilise.py)
that pipelines and `chromacast colorize` apply by default; `stabilised_ratio` and
`stabilised_flicker_left` score it the same way. Its flow (DIS fast by default, at the
network's input size) is computed apart from the metric's (DIS medium at the evaluation size). Both
state-on variants merge ab with L on the host, so they differ only by the stabiliser.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from stream.logs import setup_logging

from engines import colour, metrics
from engines.backend import DEFAULT_MODEL, Engine, EngineError, open_engine
from engines.hints import Hint
from engines.sheet import contact_sheet, write_png
from engines.stabilise import FLOW_PRESETS, ColourStabiliser, StabiliserSettings

log = logging.getLogger("chromacast.eval")

DATA = Path("../shared/data/eval")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".y4m"}
SEPIA_AB = (6.0, 14.0)  # Lab a, b of the constant-tint reference row
HINT_BOXES = 3  # box hints per image in the hinted variant
VARIANTS = ("state_on", "state_off", "grey", "ground_truth", "carried", "stabilised")


class EvalError(RuntimeError):
    """Bad input for the evaluation; the message is one line for the user."""


def resize_short_side(bgr: np.ndarray, short_side: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return bgr
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def grey_baseline(l8: np.ndarray) -> np.ndarray:
    """BGR of the input L with ab = 0 (what a black-and-white frame looks like)."""
    neutral = np.full_like(l8, 128)
    return cv2.cvtColor(cv2.merge((l8, neutral, neutral)), cv2.COLOR_Lab2BGR)


def image_datasets(root: Path) -> dict[str, list[Path]]:
    """{dataset name: image paths}: each subfolder with images, or `root` itself if it has images."""
    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)

    sets = {d.name: images_in(d) for d in sorted(root.iterdir()) if d.is_dir()}
    sets = {k: v for k, v in sets.items() if v}
    if images_in(root):
        sets[root.name] = images_in(root)
    return sets


def colorize_one(engine: Engine, l8: np.ndarray, short_side: int, hints: list[Hint] | None = None) -> np.ndarray:
    h, w = l8.shape
    state = engine.new_state(engine.network_size(w, h, short_side))
    return engine.colorize([l8], [state], [hints] if hints else None)[0]


def sepia(l8: np.ndarray) -> np.ndarray:
    """The input L under one constant warm tint: a reference that any real colorization must beat."""
    ab = np.empty((2, max(1, l8.shape[0] // 4), max(1, l8.shape[1] // 4)), np.float32)
    ab[0], ab[1] = SEPIA_AB
    return colour.merge_l8_ab(l8, ab)


def hint_boxes(truth: np.ndarray, seed: int, count: int = HINT_BOXES) -> list[Hint]:
    """`count` boxes (12-25% of the short side) at random places, each hinted with the ground
    truth's mean ab inside it: what a user who knows the colours would give."""
    rng = np.random.default_rng(seed)
    h, w = truth.shape[:2]
    lab = colour.bgr_to_lab_float(truth)
    boxes = []
    for _ in range(count):
        side = rng.uniform(0.12, 0.25) * min(h, w)
        bw, bh = side / w, side / h
        x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
        a, b = box_pixels(lab, x0, y0, x0 + bw, y0 + bh)[:, 1:].mean(0)
        boxes.append(Hint(x0, y0, x0 + bw, y0 + bh, float(a), float(b), radius=0.0))
    return boxes


def box_pixels(image: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """N×C pixels of `image` inside a box given in frame-relative coordinates."""
    h, w = image.shape[:2]
    xa, xb = int(round(x0 * w)), max(int(round(x0 * w)) + 1, int(round(x1 * w)))
    ya, yb = int(round(y0 * h)), max(int(round(y0 * h)) + 1, int(round(y1 * h)))
    return image[ya:yb, xa:xb].reshape(-1, image.shape[2])


def hint_delta_e(output: np.ndarray, hints: list[Hint]) -> float:
    """Mean over the boxes of the CIE76 ΔE (ab only: L is the input's own) between the output's
    mean colour inside a box and the colour asked for there."""
    lab = colour.bgr_to_lab_float(output)
    return float(np.mean([np.hypot(*(box_pixels(lab, h.x0, h.y0, h.x1, h.y1)[:, 1:].mean(0) - (h.a, h.b)))
                          for h in hints]))


def draw_boxes(image: np.ndarray, hints: list[Hint]) -> np.ndarray:
    out = image.copy()
    h, w = out.shape[:2]
    for hint in hints:
        cv2.rectangle(out, (int(hint.x0 * w), int(hint.y0 * h)), (int(hint.x1 * w), int(hint.y1 * h)),
                      (255, 255, 255), 1)
    return out


def evaluate_images(engine: Engine, paths: list[Path], short_side: int, net_short_side: int | None = None,
                    sheet_rows: list | None = None, sheet_samples: int = 0) -> dict:
    """`short_side`: the evaluation resolution; `net_short_side`: the network's input (default the same).
    With `sheet_rows`, `sheet_samples` evenly spread images append their row
    (ground truth, grey, output, output with box hints) to it."""
    net = net_short_side or short_side
    rows, hue, hue_sepia, hue_hinted, hinted = [], metrics.HueScore(), metrics.HueScore(), metrics.HueScore(), []
    picks = set(np.linspace(0, len(paths) - 1, sheet_samples).round().astype(int)) if sheet_samples and paths else set()
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("skipping unreadable image %s", p)
            continue
        gt = resize_short_side(img, short_side)
        l8 = colour.to_l8(gt)
        pred, grey, tint = colorize_one(engine, l8, net), grey_baseline(l8), sepia(l8)
        boxes = hint_boxes(gt, seed=i)
        pred_hinted = colorize_one(engine, l8, net, boxes)
        engine.enforce_hints = False  # the network alone: how far it takes the hint by itself
        pred_hinted_net = colorize_one(engine, l8, net, boxes)
        engine.enforce_hints = True
        hue.add(pred, gt)
        hue_sepia.add(tint, gt)
        hue_hinted.add(pred_hinted, gt)
        hinted.append((metrics.psnr(pred_hinted, gt), hint_delta_e(pred_hinted, boxes),
                       hint_delta_e(pred_hinted_net, boxes)))
        rows.append((metrics.psnr(pred, gt), metrics.psnr(grey, gt), metrics.colourfulness(pred),
                     metrics.colourfulness(gt), metrics.colourfulness(grey), metrics.psnr(tint, gt)))
        if sheet_rows is not None and i in picks:
            sheet_rows.append([gt, grey, pred, draw_boxes(pred_hinted, boxes)])
    if not rows:
        return {"count": 0}
    psnr, psnr_grey, cf, cf_gt, cf_grey, psnr_sepia = np.mean(np.array(rows), axis=0)
    psnr_hinted, delta_e, delta_e_net = np.mean(np.array(hinted), axis=0)
    return {"count": len(rows), "psnr": psnr, "psnr_grey": psnr_grey, "colourfulness": cf,
            "colourfulness_gt": cf_gt, "colourfulness_grey": cf_grey,
            "colourfulness_gap": abs(cf_gt - cf), "colourfulness_ratio": cf / cf_gt if cf_gt > 0 else None,
            **hue.result(),
            "sepia": {"psnr": psnr_sepia, **hue_sepia.result()},
            "hinted": {"boxes_per_image": HINT_BOXES, "psnr": psnr_hinted, "box_delta_e": delta_e,
                       "box_delta_e_network": delta_e_net,
                       **hue_hinted.result()}}


def carry_colours(previous: np.ndarray, l8: np.ndarray, pair: metrics.FlowPair) -> np.ndarray:
    """The previous output's ab moved along the flow onto the current frame, with its L."""
    ab = cv2.cvtColor(previous, cv2.COLOR_BGR2Lab)[..., 1:]
    ab = cv2.remap(ab, pair.back_x, pair.back_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(np.dstack((l8, ab)), cv2.COLOR_Lab2BGR)


def read_frames(path: Path, short_side: int, limit: int | None) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EvalError(f"cannot open video {path}")
    try:
        n = 0
        while limit is None or n < limit:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield resize_short_side(frame, short_side)
    finally:
        cap.release()


class SequenceScore:
    """Running metrics of one output sequence; keeps only what the next frame needs."""

    def __init__(self, with_psnr: bool = True):
        self.with_psnr = with_psnr
        self.prev: np.ndarray | None = None
        self.hists: deque[np.ndarray] = deque(maxlen=max(metrics.CDC_GAPS))
        self.divergences: dict[int, list[float]] = {g: [] for g in metrics.CDC_GAPS}
        self.ewarp: list[float] = []
        self.colourfulness: list[float] = []
        self.psnr: list[float] = []

    def add(self, frame: np.ndarray, pair: metrics.FlowPair | None, reference: np.ndarray) -> None:
        if self.prev is not None and pair is not None:
            e = metrics.pair_warp_error(self.prev, frame, pair)
            if e is not None:
                self.ewarp.append(e)
        hist = metrics.channel_histograms(frame)
        for gap in metrics.CDC_GAPS:
            if len(self.hists) >= gap:
                self.divergences[gap].append(metrics.histogram_divergence(self.hists[-gap], hist))
        self.hists.append(hist)
        self.prev = frame
        self.colourfulness.append(metrics.colourfulness(frame))
        if self.with_psnr:
            self.psnr.append(metrics.psnr(frame, reference))

    def result(self) -> dict:
        out = {"ewarp": float(np.mean(self.ewarp)) if self.ewarp else float("nan"),
               "cdc": metrics.cdc_from_divergences(self.divergences),
               "colourfulness": float(np.mean(self.colourfulness))}
        if self.with_psnr:
            out["psnr"] = float(np.mean(self.psnr))
        return out


def evaluate_video(engine: Engine, path: Path, short_side: int, limit: int | None,
                   net_short_side: int | None = None, stabiliser: StabiliserSettings = StabiliserSettings(),
                   sweep: Sequence[StabiliserSettings] = ()) -> dict:
    """Score one video frame by frame (memory stays bounded whatever its length). `sweep`: more
    stabiliser settings, each scored like "stabilised" on the same network output (result["sweep"])."""
    stabilise = ColourStabiliser(stabiliser, engine.info.ab_stride)
    swept = [(ColourStabiliser(s, engine.info.ab_stride), SequenceScore()) for s in sweep]
    scores = {v: SequenceScore(with_psnr=v != "ground_truth") for v in VARIANTS}
    flow = metrics.DisFlow()
    carried = fresh = None
    prev_l8, frames = None, 0
    for gt in read_frames(path, short_side, limit):
        l8 = colour.to_l8(gt)
        if carried is None:
            size = engine.network_size(l8.shape[1], l8.shape[0], net_short_side or short_side)
            carried, fresh = engine.new_state(size), engine.new_state(size)
        engine.reset_state(fresh)
        # the flow of the input frames is shared by every variant being scored
        pair = flow.pair(prev_l8, l8) if prev_l8 is not None else None
        l_net = colour.network_l8(l8, carried.size)
        ab = engine.predict([l_net], [carried])[0]
        for other, score in swept:  # each on its own copy: merging clips ab in place
            score.add(engine.merge(l8, other.apply(l_net, ab.copy())), pair, gt)
        outputs = {"state_on": engine.merge(l8, ab.copy()),
                   "stabilised": engine.merge(l8, stabilise.apply(l_net, ab)),
                   "state_off": engine.colorize([l8], [fresh])[0],
                   "grey": grey_baseline(l8), "ground_truth": gt}
        outputs["carried"] = outputs["state_on"] if pair is None else carry_colours(scores["carried"].prev, l8, pair)
        for v, frame in outputs.items():
            scores[v].add(frame, pair, gt)
        prev_l8, frames = l8, frames + 1
    result: dict = {"frames": frames}
    if frames < 2:
        return result
    result.update({v: s.result() for v, s in scores.items()})
    result.update(ewarp_ratios(result))
    if swept:
        result["sweep"] = [score.result() for _, score in swept]
    return result


def ewarp_ratios(result: dict) -> dict:
    """on / off, and the share of the per-frame flicker above the carried floor that is left."""
    on, off, floor, steady = (result[v]["ewarp"] for v in ("state_on", "state_off", "carried", "stabilised"))
    return {"ewarp_ratio": on / off if off > 0 else None,
            "flicker_left": (on - floor) / (off - floor) if off > floor else None,
            "stabilised_ratio": steady / off if off > 0 else None,
            "stabilised_flicker_left": (steady - floor) / (off - floor) if off > floor else None}


def mean_over(results: dict[str, dict]) -> dict:
    """Mean of each variant's metrics over the videos that have them."""
    scored = [r for r in results.values() if "state_on" in r]
    if not scored:
        return {}
    out: dict = {v: {k: float(np.mean([r[v][k] for r in scored])) for k in scored[0][v]} for v in VARIANTS}
    out.update(ewarp_ratios(out))
    return out


def finite(obj):
    """The report with numpy scalars as Python floats and NaN/inf as null (strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def print_table(report: dict) -> None:
    if report.get("images"):
        width = max(12, *(len(n) + 2 for n in report["images"]))
        print(f"{'images':<{width}}{'n':>4}{'PSNR':>8}{'grey':>8}{'sepia':>8}{'colour':>8}{'GT':>8}{'ratio':>7}"
              f"{'hue':>7}{'hue_bal':>8}{'sepia':>7}{'hint ΔE':>8}{'net ΔE':>7}{'PSNR':>7}")
        for name, r in report["images"].items():
            sep, hin = r.get("sepia", {}), r.get("hinted", {})
            print(f"{name:<{width}}{r['count']:>4}{_fmt(r.get('psnr')):>8}{_fmt(r.get('psnr_grey')):>8}"
                  f"{_fmt(sep.get('psnr')):>8}{_fmt(r.get('colourfulness')):>8}{_fmt(r.get('colourfulness_gt')):>8}"
                  f"{_fmt(r.get('colourfulness_ratio')):>7}{_fmt(r.get('hue_hits')):>7}"
                  f"{_fmt(r.get('hue_balanced')):>8}{_fmt(sep.get('hue_balanced')):>7}"
                  f"{_fmt(hin.get('box_delta_e'), '.1f'):>8}{_fmt(hin.get('box_delta_e_network'), '.1f'):>7}"
                  f"{_fmt(hin.get('psnr')):>7}")
        sectors = [(n, r["hue_sectors"]) for n, r in report["images"].items() if r.get("hue_sectors")]
        if sectors:
            names = list(sectors[0][1])
            print(f"\n{'hue hit rate':<{width}}" + "".join(f"{k:>14}" for k in names))
            for name, sec in sectors:
                print(f"{name:<{width}}" + "".join(
                    f"{_fmt(sec[k]['rate']):>8} ({sec[k]['share']:.0%})".rjust(14) for k in names))
    if report.get("videos"):
        width = max(14, *(len(n) + 2 for n in report["videos"]))
        print(f"\n{'videos':<{width}}{'n':>5}  {'E_warp x1e3: on/off/grey/GT/carried/stab':<43}"
              f"{'on/off':>7}{'left':>7}{'stab/off':>9}  {'CDC x1e3: on/off/grey/GT/stab':<31}{'PSNR on/off':>12}")
        rows = dict(report["videos"], **({"mean": report["video_mean"]} if report.get("video_mean") else {}))
        for name, r in rows.items():
            if "state_on" not in r:
                continue
            ew = "/".join(_fmt(r[v]["ewarp"] * 1e3) for v in VARIANTS)
            cd = "/".join(_fmt(r[v]["cdc"] * 1e3) for v in VARIANTS if v != "carried")
            ps = f"{_fmt(r['state_on']['psnr'])}/{_fmt(r['state_off']['psnr'])}"
            print(f"{name:<{width}}{r.get('frames', ''):>5}  {ew:<43}{_fmt(r.get('ewarp_ratio'), '.3f'):>7}"
                  f"{_fmt(r.get('flicker_left'), '.3f'):>7}{_fmt(r.get('stabilised_ratio'), '.3f'):>9}  {cd:<31}{ps:>12}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="chromacast eval", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped model)")
    ap.add_argument("--engine", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    ap.add_argument("--images", type=Path, default=DATA / "images", help="folder of image dataset folders")
    ap.add_argument("--videos", type=Path, default=DATA / "videos", help="folder of colour videos")
    ap.add_argument("--short-side", type=int, default=256, help="evaluation resolution (short side, pixels)")
    ap.add_argument("--network-short-side", type=int, default=None,
                    help="network input short side (default: the model's own, from its metadata)")
    ap.add_argument("--stabiliser-strength", type=float, default=StabiliserSettings.strength,
                    help="flow-guided colour stabiliser of the 'stabilised' variant, 0-1 (default %(default)s)")
    ap.add_argument("--stabiliser-tolerance", type=float, default=StabiliserSettings.tolerance,
                    help="its L difference tolerance, L units (default %(default)s)")
    ap.add_argument("--stabiliser-flow", default=StabiliserSettings.flow, choices=sorted(FLOW_PRESETS),
                    help="its DIS optical flow preset (default %(default)s)")
    ap.add_argument("--json", type=Path, default=None, help="write the full report here")
    ap.add_argument("--limit", type=int, default=None, help="at most N images per dataset and N frames per video")
    ap.add_argument("--no-images", action="store_true", help="skip the image datasets")
    ap.add_argument("--no-videos", action="store_true", help="skip the videos")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="write a contact sheet PNG: ground truth | grey | output | hinted, per image set")
    ap.add_argument("--sheet-samples", type=int, default=6, help="images per set on the sheet (default %(default)s)")
    ap.add_argument("--sheet-films", type=Path, default=None,
                    help="also put a frame of each black-and-white video in this folder on the sheet")
    ap.add_argument("--reference", default=None, metavar="first-frame|FILE",
                    help="colour from a reference instead: each video's first frame, or FILE for the image sets "
                         "(engines/reference_eval.py)")
    return ap.parse_args(argv)


def check_output(path: Path | None, option: str) -> None:
    """An output that cannot be written is found before any work is done, not after it."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if path.is_dir() or not probe.is_dir() or not os.access(probe, os.W_OK):
        raise EvalError(f"{option} {path}: cannot write there")


def run(args: argparse.Namespace) -> dict:
    if args.short_side < 32:
        raise EvalError("--short-side must be at least 32")
    if args.network_short_side is not None and args.network_short_side < 32:
        raise EvalError("--network-short-side must be at least 32")
    if not args.no_images and not args.images.is_dir():
        raise EvalError(f"image folder not found: {args.images} (use --images DIR or --no-images)")
    if not args.no_videos and not args.videos.is_dir():
        raise EvalError(f"video folder not found: {args.videos} (use --videos DIR or --no-videos)")
    check_output(args.json, "--json")
    check_output(args.sheet, "--sheet")
    if args.sheet_samples < 1 or args.sheet_samples > 64:
        raise EvalError("--sheet-samples must be between 1 and 64")
    if args.sheet_films is not None and not args.sheet_films.is_dir():
        raise EvalError(f"--sheet-films folder not found: {args.sheet_films}")
    try:
        stabiliser = StabiliserSettings(args.stabiliser_strength, args.stabiliser_tolerance, args.stabiliser_flow)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    engine = open_engine(args.model, kind=args.engine)
    started = time.time()
    net = args.network_short_side or engine.info.default_short_side
    report: dict = {"model": str(args.model or DEFAULT_MODEL), "engine": engine.name, "short_side": args.short_side,
                    "network_short_side": net,
                    "stabiliser": {"strength": stabiliser.strength, "tolerance": stabiliser.tolerance,
                                   "flow": stabiliser.flow},
                    "images": {}, "videos": {}}
    sheet: dict[str, list] = {}
    try:
        if not args.no_images:
            for name, paths in image_datasets(args.images).items():
                log.info("images: %s (%d)", name, min(len(paths), args.limit or len(paths)))
                rows = sheet.setdefault(name, []) if args.sheet else None
                report["images"][name] = evaluate_images(engine, paths[:args.limit], args.short_side, net,
                                                         rows, args.sheet_samples)
        if args.sheet and args.sheet_films:
            sheet["black-and-white films (no ground truth)"] = film_rows(
                engine, args.sheet_films, args.short_side, net)
        if not args.no_videos:
            for path in sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTS):
                log.info("video: %s", path.name)
                report["videos"][path.stem] = evaluate_video(engine, path, args.short_side, args.limit, net, stabiliser)
            report["video_mean"] = mean_over(report["videos"])
    finally:
        engine.close()
    if not report["images"] and not report["videos"]:
        raise EvalError("no images or videos found to evaluate")
    report["seconds"] = round(time.time() - started, 1)
    if args.sheet:
        write_png(args.sheet, contact_sheet({k: v for k, v in sheet.items() if v},
                                            ["ground truth", "grey", "output", "output, box hints"]))
        report["sheet"] = str(args.sheet)
    return report


def film_rows(engine: Engine, folder: Path, short_side: int, net: int) -> list[list]:
    """For each video: the frame at a third of its length, as given and colorized (the state
    run over the 24 frames before it, as a pipeline would)."""
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTS):
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        frames = list(read_frames(path, short_side, max(1, total // 3)))[-25:]
        if not frames:
            continue
        state, out = None, None
        for frame in frames:
            l8 = colour.to_l8(frame)
            state = state or engine.new_state(engine.network_size(l8.shape[1], l8.shape[0], net))
            out = engine.colorize([l8], [state])[0]
        rows.append([None, frames[-1], out, None])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if args.reference:  # its own evaluation, in its own module
        from engines import reference_eval
        run_eval, table = reference_eval.run, reference_eval.print_table
    else:
        run_eval, table = run, print_table
    try:
        report = run_eval(args)
    except (EvalError, EngineError) as exc:
        print(f"chromacast eval: {exc}", file=sys.stderr)
        return 1
    table(report)
    if report.get("sheet"):
        print(f"\nsheet: {report['sheet']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(finite(report), indent=2) + "\n")
        print(f"\nreport: {args.json}")
    return 0
