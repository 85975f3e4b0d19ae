"""`bentoml serve` in a subprocess for the benchmarks and the end-to-end tests: wait until it is
ready, stop it cleanly (its whole process group)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.process import free_port, stop_group

BENTOML = str(Path(sys.executable).parent / "bentoml")


class ServerProcess:
    """`bentoml serve TARGET` on 127.0.0.1 (a free port by default), in its own process group."""

    def __init__(
        self,
        target: str,
        env: dict | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        ready_path: str = "/readyz",
        timeout_s: float = 90.0,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("w") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait(ready_path, timeout_s)

    def _tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log and self.log.exists() else "(no log)"

    def _wait(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.process.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"bentoml serve was not ready within {timeout_s:.0f} s:\n{self._tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by `bentoml serve` and its worker processes."""
        import psutil

        total = 0.0
        root = psutil.Process(self.process.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                cpu = process.cpu_times()
                total += cpu.user + cpu.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        stop_group(self.process)
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
