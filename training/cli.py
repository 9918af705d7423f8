"""`chromacast train` and `chromacast export`: command-line entry points of the training package.

Both report bad input (missing file, invalid config, unusable device, weights that
do not fit) as one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError
from stream.logs import setup_logging

log = logging.getLogger("chromacast.train")


class CliError(RuntimeError):
    """Bad input; the message is one line for the user."""


def _setup_logging() -> None:
    setup_logging(timestamps=True)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "config"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err.get('msg', 'invalid')}{more}"


def train_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chromacast train", description="Train the colorization network. "
                                 "Resumes from OUT/checkpoint.pt when it exists.")
    ap.add_argument("--config", type=Path, default=Path("training/default.yaml"), help="training YAML")
    ap.add_argument("--out", type=Path, default=None, help="run folder (checkpoint.pt, train.log)")
    ap.add_argument("--steps", type=int, default=None, help="total optimisation steps (including resumed ones)")
    ap.add_argument("--device", default=None, help="auto, cpu or cuda[:N]")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="time budget over all (resumed) runs; stops with a checkpoint")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from training.from_onnx import OnnxWeightsError
        from training.train import load_config, train

        overrides = {k: v for k, v in (("out", args.out), ("steps", args.steps), ("device", args.device),
                                       ("max_minutes", args.max_minutes)) if v is not None}
        if not args.config.is_file():
            raise CliError(f"config file not found: {args.config}")
        try:
            cfg = load_config(args.config, overrides)
        except yaml.YAMLError as exc:
            raise CliError(f"cannot parse {args.config}: {str(exc).splitlines()[0]}") from None
        except ValidationError as exc:
            raise CliError(f"invalid config {args.config}: {_first_error(exc)}") from None
        except (TypeError, AttributeError):
            raise CliError(f"invalid config {args.config}: expected a mapping of settings") from None
        _check_inputs(cfg)
        cfg.out.mkdir(parents=True, exist_ok=True)
        _setup_logging()
        logfile = logging.FileHandler(cfg.out / "train.log")  # progress kept beside the checkpoint
        logfile.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logging.getLogger("chromacast").addHandler(logfile)
        ckpt = cfg.out / "checkpoint.pt"
        log.info("config %s; run folder %s%s", args.config, cfg.out, " (resuming)" if ckpt.exists() else "")
        try:
            path = train(cfg)
            log.info("done: %s", path)
        except OnnxWeightsError as exc:
            raise CliError(str(exc)) from None
        except RuntimeError as exc:
            if ckpt.exists() and ("state_dict" in str(exc) or "size mismatch" in str(exc)):
                raise CliError(f"checkpoint {ckpt} does not match config {args.config} "
                               f"(different network settings?); use another --out") from None
            raise
        except KeyboardInterrupt:
            raise CliError(f"interrupted; the last checkpoint in {cfg.out} is kept (rerun to resume)") from None
        finally:
            logging.getLogger("chromacast").removeHandler(logfile)
            logfile.close()
    except CliError as exc:
        print(f"chromacast train: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # training.train reports missing data this way
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise
    return 0


def _check_inputs(cfg) -> None:
    import torch

    for folder in cfg.images if isinstance(cfg.images, list) else [cfg.images]:
        if not folder.is_dir():
            raise CliError(f"training image folder not found: {folder}")
    if cfg.init_from and not cfg.init_from.is_file():
        raise CliError(f"init_from checkpoint not found: {cfg.init_from}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"device {cfg.device!r} requested but CUDA is not available to torch")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise CliError(f"unknown device {cfg.device!r}; expected auto, cpu or cuda")


def export_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chromacast export", description="Export a training checkpoint, or "
                                 "Zhang et al.'s official ECCV16/SIGGRAPH17 weights, to an ONNX engine model.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="training checkpoint (runs/…/checkpoint.pt)")
    src.add_argument("--official", choices=["eccv16", "siggraph17"], help="official network (needs --weights)")
    src.add_argument("--onnx", type=Path, help="an exported chromacast ONNX model (with --int8)")
    ap.add_argument("--weights", type=Path, help="official .pth state dict")
    ap.add_argument("--head", choices=["regression", "classification"], default="regression",
                    help="SIGGRAPH17 output head (default: regression, as upstream)")
    ap.add_argument("--out", type=Path, help="ONNX file to write (with --onnx: default NAME.int8.onnx beside it)")
    ap.add_argument("--int8", action="store_true", help="also write the INT8 CPU model, NAME.int8.onnx beside "
                    "the FP32 one (engines/quantize.py; with --onnx: only that)")
    ap.add_argument("--calibration", type=Path, default=None,
                    help="photos to calibrate --int8 on (default ../shared/data/train/scenes)")
    ap.add_argument("--calibration-images", type=int, default=64, metavar="N", help="photos used (default 64)")
    ap.add_argument("--size", type=int, default=224, help="default input short side recorded in the model")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    ap.add_argument("--temperature", type=float, default=None,
                    help="annealed-mean temperature baked into the model (default: the checkpoint's, 0.38); "
                         "higher is safer and greyer, lower more colourful")
    ap.add_argument("--prior-correction", type=float, default=0.0,
                    help="0..1: how far to undo the class rebalancing at decoding (logits - s*log w); "
                         "1 decodes the calibrated colour distribution (higher PSNR, less vivid)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    if args.onnx is not None and not args.int8:
        ap.error("--onnx goes with --int8")
    if args.onnx is None and args.out is None:
        ap.error("--out is required")
    try:
        if args.onnx is None:
            _export(args)
        if args.int8:
            from engines.quantize import DEFAULT_CALIBRATION, QuantizeError, int8_path, quantize_file

            fp32 = args.onnx or args.out
            t0 = time.time()
            try:
                path = quantize_file(fp32, args.out if args.onnx else int8_path(args.out),
                                     args.calibration or DEFAULT_CALIBRATION, args.calibration_images)
            except QuantizeError as exc:
                raise CliError(str(exc)) from None
            log.info("wrote %s (%.1f MB, %.0fs)", path, path.stat().st_size / 2 ** 20, time.time() - t0)
    except CliError as exc:
        print(f"chromacast export: {exc}", file=sys.stderr)
        return 1
    return 0


def _export(args) -> None:
    """Export a checkpoint or official weights to args.out, checked against PyTorch."""
    model, meta = _load_for_export(args)
    from engines.export import export_onnx

    t0 = time.time()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and folding notes
        warnings.simplefilter("ignore")
        path = export_onnx(model, args.out, short_side=args.size, extra_metadata=meta)
    log.info("wrote %s (%.1f MB, %.0fs)", path, path.stat().st_size / 2 ** 20, time.time() - t0)
    if not args.no_check:
        diff = compare_onnx(model, path, args.size)
        log.info("ONNX Runtime vs PyTorch: max |Δab| %.2e Lab units over 3 frames with hints", diff)
        if not diff < 0.05:
            raise CliError(f"exported model disagrees with PyTorch (max |Δab| {diff:.3g}); not trustworthy")


def _load_for_export(args):
    if args.size < 32 or args.size % 32:
        raise CliError(f"--size must be a positive multiple of 32, not {args.size}")
    if args.temperature is not None and not 0 < args.temperature <= 1:
        raise CliError(f"--temperature must be in (0, 1], not {args.temperature}")
    if not 0 <= args.prior_correction <= 1:
        raise CliError(f"--prior-correction must be in [0, 1], not {args.prior_correction}")
    if args.official:
        from engines.official import OfficialWeightsError, load_official

        if args.weights is None:
            raise CliError("--official needs --weights FILE.pth")
        try:
            options = {"head": args.head} if args.official == "siggraph17" else {}
            model = load_official(args.official, args.weights, **options)
        except OfficialWeightsError as exc:
            raise CliError(str(exc)) from None
        return model, dict(model.metadata(), weights=args.weights.name)
    if args.weights is not None:
        raise CliError("--weights goes with --official; a checkpoint carries its own weights")
    if not args.checkpoint.is_file():
        raise CliError(f"checkpoint not found: {args.checkpoint}")
    import torch

    from training.train import load_checkpoint

    try:
        model = load_checkpoint(args.checkpoint)
        if args.temperature is not None:
            model.temperature = args.temperature
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if args.prior_correction:
            from training.losses import REBALANCE_LAMBDA, rebalance_weights

            lam = ck.get("config", {}).get("rebalance_lambda", REBALANCE_LAMBDA)
            weights = torch.as_tensor(rebalance_weights(ck["prior"], lam), dtype=torch.float32)
            model.logit_bias = -args.prior_correction * weights.log()
    except Exception as exc:
        raise CliError(f"cannot load checkpoint {args.checkpoint}: {str(exc).splitlines()[0]}") from None
    cfg = ck.get("config", {})
    meta = {"model": "chromacast", "decoder": "annealed-mean", "bins": str(len(ck["bins"])),
            "training_step": str(ck.get("step")), "training_crop": str(cfg.get("crop")),
            "hints": "used", "recurrent": "convgru", "prior_correction": str(args.prior_correction)}
    if model.memory_channels:  # the state's last channels are MemoryCorrection's memory
        meta["memory_channels"] = str(model.memory_channels)
        meta["memory_at_quarter"] = "true" if model.memory_at_quarter else "false"
    if ck.get("elapsed_s") is not None:
        meta["training_minutes"] = f"{ck['elapsed_s'] / 60:.0f}"
    return model, meta


def compare_onnx(model, path: Path, size: int, frames: int = 3) -> float:
    """Max |ab difference| between ONNX Runtime and PyTorch over a few frames of one stream,
    with the state carried over and non-zero hints on the first frame."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    h, w = size, size + 32  # not square: the exported sizes are dynamic
    c = model.state_channels
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state_np = np.zeros((1, c, h // 16, w // 16), np.float32)
    state_pt = torch.zeros(1, c, h // 16, w // 16)
    worst = 0.0
    for t in range(frames):
        L = rng.uniform(-1, 1, (1, 1, h, w)).astype(np.float32)
        hint_ab = np.zeros((1, 2, h, w), np.float32)
        hint_mask = np.zeros((1, 1, h, w), np.float32)
        if t == 0:
            hint_ab[:, 0, 8:16, 8:16], hint_ab[:, 1, 8:16, 8:16] = 0.4, -0.3
            hint_mask[:, :, 8:16, 8:16] = 1
        ab, state_np = sess.run(None, {"L": L, "hint_ab": hint_ab, "hint_mask": hint_mask, "state": state_np})
        with torch.no_grad():
            ab_pt, state_pt = model(torch.from_numpy(L), torch.from_numpy(hint_ab), torch.from_numpy(hint_mask),
                                    state_pt)
        worst = max(worst, float(np.abs(ab - ab_pt.numpy()).max()))
    return worst
