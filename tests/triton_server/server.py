"""A real Triton Inference Server for the tests, from the `nvidia-pytriton` wheel (CPU only).

`python tests/triton_server/server.py` prepares it once under $CHROMACAST_TRITON_HOME
(default ~/.cache/chromacast/triton): the wheel unpacked (tritonserver, python backend and
its stub), and a venv for the stub with numpy<2 (the stub gives empty outputs with numpy 2),
onnxruntime and OpenCV. The stub finds that venv through PATH (its embedded Python takes
the `python3` found there, and with it the venv's site-packages).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HOME = Path(os.environ.get("CHROMACAST_TRITON_HOME", Path.home() / ".cache" / "chromacast" / "triton"))
WHEEL = "nvidia-pytriton==0.7.0"
STUB_PACKAGES = ["numpy<2", "onnxruntime", "opencv-python-headless<4.11"]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def paths(home: Path = HOME) -> dict[str, Path]:
    tritonserver = home / "wheel" / "pytriton" / "tritonserver"
    return {"binary": tritonserver / "bin" / "tritonserver", "libs": home / "wheel" / "nvidia_pytriton.libs",
            "backends": home / "backends", "venv": home / "venv", "ready": home / f".ready-{PY}",
            "tritonserver": tritonserver}


def prepare(home: Path = HOME, timeout: float = 900) -> None:
    p = paths(home)
    if p["ready"].exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    download = home / "download"
    subprocess.run(pip + ["download", "--no-deps", WHEEL, "-d", str(download)], check=True, timeout=timeout)
    with zipfile.ZipFile(next(download.glob("nvidia_pytriton-*.whl"))) as wheel:
        wheel.extractall(home / "wheel")
    os.chmod(p["binary"], 0o755)
    backend = p["backends"] / "python"  # the backend and the stub for this Python in one folder
    backend.mkdir(parents=True, exist_ok=True)
    for item in (p["tritonserver"] / "backends" / "python").iterdir():
        shutil.copy2(item, backend)
    stub = backend / "triton_python_backend_stub"
    shutil.copy2(p["tritonserver"] / "python_backend_stubs" / PY / "triton_python_backend_stub", stub)
    os.chmod(stub, 0o755)
    base_python = Path(sys.base_prefix) / "bin" / f"python{PY}"
    subprocess.run([str(base_python), "-m", "venv", "--clear", str(p["venv"])], check=True, timeout=timeout)
    subprocess.run([str(p["venv"] / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check",
                    "install", *STUB_PACKAGES], check=True, timeout=timeout)
    shutil.rmtree(download, ignore_errors=True)
    p["ready"].touch()


def unavailable_reason(home: Path = HOME) -> str | None:
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return "tritonclient not installed (pip install 'chromacast[triton]')"
    if not (Path(sys.base_prefix) / "lib" / f"libpython{PY}.so").exists():
        return f"no shared libpython{PY} under {sys.base_prefix}/lib (the python backend stub needs it)"
    try:
        prepare(home)
    except Exception as exc:
        return f"cannot prepare tritonserver from {WHEEL} under {home}: {str(exc).splitlines()[0]}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on 127.0.0.1 with `repository`, loading `models`; start(), kill(), start() again
    (same ports)."""

    def __init__(self, repository: Path, models: list[str], log_path: Path, home: Path = HOME):
        self.repository, self.models, self.log_path, self.home = repository, models, log_path, home
        self.ports = [free_port() for _ in range(3)]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def start(self, timeout: float = 90) -> "TritonServer":
        p = paths(self.home)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{p['venv'] / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(Path(sys.base_prefix) / "lib"), str(p["libs"])])
        http, grpc, metrics = self.ports
        args = [str(p["binary"]), f"--model-repository={self.repository}", f"--backend-directory={p['backends']}",
                "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", f"--http-port={http}",
                f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--allow-metrics=false",
                "--exit-timeout-secs=3", "--model-control-mode=explicit", "--log-verbose=0"]
        args += [f"--load-model={m}" for m in self.models]
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if all(client.is_model_ready(m, client_timeout=1) for m in self.models):
                        return self
                except Exception:
                    pass
                time.sleep(0.3)
        finally:
            client.close()
        self.kill()
        tail = self.log_path.read_text(errors="replace")[-600:]
        raise RuntimeError(f"tritonserver did not get ready on {self.url}: ...{tail}")

    def stop(self, grace_s: float = 8) -> None:
        """SIGTERM (the python stubs free their shared memory), SIGKILL after `grace_s`."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the server's process group (the server and its python stubs), by its id."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)
        if self.process:
            self.log.close()
        self.process = None


if __name__ == "__main__":
    prepare()
    print(paths()["binary"])
