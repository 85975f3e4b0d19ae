"""Run the real Triton Inference Server that ships in the `nvidia-pytriton` wheel.

The wheel bundles `tritonserver` (2.51) with only the Python backend. Three things make the
bare binary start (see the platform notes): LD_LIBRARY_PATH holding the wheel's libraries and
this interpreter's libpython, this environment's `bin` first on PATH (the backend stub
imports its packages), and the stub for this Python version inside the backend directory.
The backend directory is assembled in a temporary folder (links, one copied stub), removed
on stop. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from serving.process import free_port, stop_group

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "install it with `pip install nvidia-pytriton==0.7.0` (part of `pip install -e .`)"


def wheel_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise RuntimeError(
            f"the Triton server comes from the nvidia-pytriton wheel, which is missing: {INSTALL_HINT}"
        ) from None
    server = Path(pytriton.__file__).parent / "tritonserver"
    if not (server / "bin" / "tritonserver").exists():
        raise RuntimeError(f"{server} has no bin/tritonserver: reinstall nvidia-pytriton ({INSTALL_HINT})")
    return server


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


class TritonServer:
    """`tritonserver --model-repository REPO` on 127.0.0.1; `start()` waits until it is ready."""

    def __init__(
        self,
        model_repository: Path,
        ports: Ports | None = None,
        log: Path | None = None,
        flexserve_root: Path = ROOT,
        explicit: bool = False,
    ):
        """`explicit`: Triton's model-control mode "explicit" (every model loaded at start; `load` and
        `unload` change them while it runs), so a new FlexServe version is served without a restart."""
        self.explicit = explicit
        self.model_repository = Path(model_repository).resolve()
        self.ports = ports or Ports.free()
        self.log = log
        self.flexserve_root = flexserve_root
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_file = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def _backend_dir(self, server: Path) -> Path:
        self._workdir = Path(tempfile.mkdtemp(prefix="flexserve-triton-"))
        python = self._workdir / "backends" / "python"
        python.mkdir(parents=True)
        for item in (server / "backends" / "python").iterdir():
            if item.name != "__pycache__":
                (python / item.name).symlink_to(item)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise RuntimeError(f"the nvidia-pytriton wheel has no backend stub for Python {version}")
        shutil.copy2(stub, python / stub.name)
        return self._workdir / "backends"

    def environment(self, server: Path) -> dict:
        libs = server.parent.parent / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH")) if p
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env["PYTHONUTF8"] = "1"  # the stub starts with an ASCII locale
        # The model files import FlexServe's serving package.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.flexserve_root), env.get("PYTHONPATH")) if p)
        return env

    def command(self, server: Path, backends: Path) -> list[str]:
        return [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={self._workdir / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports.grpc}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=10",
            "--strict-readiness=true",
            *(["--model-control-mode=explicit", "--load-model=*"] if self.explicit else []),
        ]

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        if not (self.model_repository / "").is_dir():
            raise RuntimeError(
                f"no Triton model repository at {self.model_repository}: write one with `flexserve triton repo`"
            )
        server = wheel_dir()
        backends = self._backend_dir(server)
        self._log_file = self.log.open("w") if self.log else tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.command(server, backends),
            env=self.environment(server),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{tail}")
            if self.ready():
                return self
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"tritonserver was not ready within {timeout_s:.0f} s:\n{tail}")

    def load(self, names: list[str]) -> None:
        """(Re)load models through Triton's model-control API: it serves the old ones until the new are
        ready. Variants first, routers last (a router calls variants)."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=120.0, connection_timeout=120.0)
        for name in sorted(names, key=lambda n: n.endswith("_router")):
            client.load_model(name)

    def unload(self, names: list[str]) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url)
        for name in names:
            client.unload_model(name)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        if self._log_file is None:
            return ""
        self._log_file.flush()
        if self.log:
            return self.log.read_text(errors="replace")[-chars:]
        self._log_file.seek(0)
        return self._log_file.read().decode(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL, as a crash would (for failover tests); `stop` still cleans up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        stop_group(self.process, timeout_s=30)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
