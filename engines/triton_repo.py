"""`chromacast triton-repo OUT`: a Triton Inference Server model repository for a chromacast model.

Two models, both behind Triton's sequence batcher (one sequence = one chromacast stream):

- NAME (python backend): engines/triton_model.py wrapping chromacast's own engine, which
  keeps each sequence's state itself; runs wherever Triton runs, CPU included.
- NAME_onnxruntime (onnxruntime backend): the ONNX model with Triton's implicit state
  (the recurrent state stays inside Triton), for NVIDIA's Triton containers; its network
  size is fixed (--size), since Triton's initial state needs fixed dims.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import engines
from engines.backend import DEFAULT_MODEL, EngineError, ModelInfo

MODEL_PY = Path(__file__).with_name("triton_model.py")


def _metadata(model: Path) -> dict[str, str]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineError(f"cannot load model {model}: {str(exc).splitlines()[0]}") from None
    meta = session.get_modelmeta().custom_metadata_map
    ModelInfo.from_metadata(meta)  # refuses a model that is not a chromacast engine model
    return meta


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}'
                     for k, v in values.items())


def _batching(max_batch: int, idle_s: float, queue_delay_us: int) -> str:
    sizes = ", ".join(str(s) for s in sorted({max_batch, max(1, max_batch // 2)}))
    return (f"  max_sequence_idle_microseconds: {int(idle_s * 1e6)}\n"
            f"  oldest {{\n    max_candidate_sequences: {max(64, 4 * max_batch)}\n"
            f"    preferred_batch_size: [ {sizes} ]\n"
            f"    max_queue_delay_microseconds: {queue_delay_us}\n  }}\n")


def python_config(name: str, meta: dict[str, str], max_batch: int, idle_s: float, instances: int,
                  queue_delay_us: int, engine: str, sys_path: list[str]) -> str:
    params = {f"chromacast.{k}": v for k, v in meta.items() if not k.startswith("chromacast.")}
    params.update({"chromacast.contract": meta["chromacast.contract"], "chromacast.engine": engine,
                   "chromacast.idle_s": f"{idle_s:g}", "chromacast.sys_path": json.dumps(sys_path)})
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "L" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }},
  {{ name: "hint_ab" data_type: TYPE_FP32 dims: [ 2, -1, -1 ] optional: true }},
  {{ name: "hint_mask" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] optional: true }}
]
output [
  {{ name: "ab" data_type: TYPE_FP32 dims: [ 2, -1, -1 ] }}
]
sequence_batching {{
{_batching(max_batch, idle_s, queue_delay_us)}  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] }} ] }}
  ]
}}
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
{_parameters(params)}
"""


def onnxruntime_config(name: str, meta: dict[str, str], max_batch: int, idle_s: float,
                       queue_delay_us: int, size: tuple[int, int]) -> str:
    info = ModelInfo.from_metadata(meta)
    w, h = size
    if w % info.size_multiple or h % info.size_multiple:
        raise EngineError(f"--size {w}x{h}: both sides must be multiples of {info.size_multiple}")
    state = f"[ {info.state_channels}, {h // info.state_stride}, {w // info.state_stride} ]"
    params = {f"chromacast.{k}": v for k, v in meta.items() if not k.startswith("chromacast.")}
    params.update({"chromacast.contract": meta["chromacast.contract"], "chromacast.size": f"{w}x{h}"})
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [
  {{ name: "L" data_type: TYPE_FP32 dims: [ 1, {h}, {w} ] }},
  {{ name: "hint_ab" data_type: TYPE_FP32 dims: [ 2, {h}, {w} ] }},
  {{ name: "hint_mask" data_type: TYPE_FP32 dims: [ 1, {h}, {w} ] }}
]
output [
  {{ name: "ab" data_type: TYPE_FP32 dims: [ 2, {h // info.ab_stride}, {w // info.ab_stride} ] }}
]
sequence_batching {{
{_batching(max_batch, idle_s, queue_delay_us)}  state [
    {{
      input_name: "state"
      output_name: "next_state"
      data_type: TYPE_FP32
      dims: {state}
      initial_state {{ name: "zero" data_type: TYPE_FP32 dims: {state} zero_data: true }}
    }}
  ]
}}
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
{_parameters(params)}
"""


def write_repository(out: Path, model: Path | None = None, name: str = "chromacast", max_batch: int = 8,
                     idle_s: float = 30.0, instances: int = 1, queue_delay_us: int = 2000,
                     engine: str = "auto", size: tuple[int, int] = (224, 160),
                     sys_path: list[str] | None = None) -> list[Path]:
    """Write both models under `out`; returns their directories. `sys_path`: folders the python
    model puts first on its sys.path (default: this chromacast's own folder)."""
    model = Path(model) if model else DEFAULT_MODEL
    if not model.is_file():
        raise EngineError(f"model file not found: {model}")
    meta = _metadata(model)
    if sys_path is None:  # numpy, onnxruntime and OpenCV come from Triton's own Python
        sys_path = [str(Path(engines.__file__).resolve().parents[1])]
    configs = {name: python_config(name, meta, max_batch, idle_s, instances, queue_delay_us, engine, sys_path),
               f"{name}_onnxruntime": onnxruntime_config(f"{name}_onnxruntime", meta, max_batch, idle_s,
                                                         queue_delay_us, size)}
    dirs = []
    for model_name, config in configs.items():
        folder = Path(out) / model_name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(config, encoding="utf-8")
        shutil.copyfile(model, folder / "1" / "model.onnx")
        dirs.append(folder)
    shutil.copyfile(MODEL_PY, dirs[0] / "1" / "model.py")
    return dirs


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chromacast triton-repo",
                                description="Write a Triton Inference Server model repository for a chromacast model.")
    p.add_argument("out", type=Path, help="repository folder to write")
    p.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    p.add_argument("--name", default="chromacast", help="model name (default: chromacast)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch across streams")
    p.add_argument("--idle-s", type=float, default=30.0, help="free a sequence's state after this long idle")
    p.add_argument("--instances", type=int, default=1, help="python model instances")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="wait this long for a fuller batch")
    p.add_argument("--engine", choices=("auto", "tensorrt", "onnxruntime"), default="auto",
                   help="the python model's engine inside Triton")
    p.add_argument("--size", type=_size, default=(224, 160),
                   help="network input WxH of the onnxruntime model (fixed; default 224x160)")
    args = p.parse_args(argv)
    try:
        dirs = write_repository(args.out, args.model, args.name, args.max_batch, args.idle_s, args.instances,
                                args.queue_delay_us, args.engine, args.size)
    except (EngineError, OSError) as exc:
        print(f"chromacast triton-repo: {exc}", file=sys.stderr)
        return 2
    for folder in dirs:
        print(folder)
    return 0
