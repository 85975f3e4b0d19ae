"""`bentoml serve` and Ray's `serve run` in a subprocess for the benchmarks and the end-to-end tests:
wait until it is ready, stop it cleanly (its whole process group)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.process import free_port, interruptible, stop_group

BENTOML = str(Path(sys.executable).parent / "bentoml")
RAY_SERVE = str(Path(sys.executable).parent / "serve")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and all its descendants."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            cpu = process.cpu_times()
            total += cpu.user + cpu.system
        except psutil.NoSuchProcess:
            pass
    return total


class ServerProcess:
    """`bentoml serve TARGET` (or `command`, e.g. `flexserve serve --repo R`) on 127.0.0.1, a free port
    by default, in its own process group; ready once `ready_path` answers 200. Its output goes to `log`
    (a temporary file when none is given), whose tail any start failure shows."""

    # BentoML's arbiter reserves its circus control ports, releases them, then binds them: on a shared
    # machine another process can take one in between. A start that dies of exactly that gets one more.
    PORT_RACE = "zmq.error.ZMQError: Address already in use"

    def __init__(
        self,
        target: str = "",
        env: dict | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        ready_path: str = "/readyz",
        timeout_s: float = 90.0,
        command: list[str] | None = None,
    ):
        if not target and not command:
            raise ValueError("ServerProcess needs a BentoML target or a command")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [*(command or [BENTOML, "serve", target]), "--host", "127.0.0.1", "--port", str(self.port)]
        self._start(argv, log, cwd, env, ready_path, timeout_s)

    def _start(self, argv: list[str], log: Path | None, cwd, env, ready_path: str, timeout_s: float, **popen) -> None:
        """Run `argv` in its own process group, its output to `log` (a temporary file when None), and
        wait until `ready_path` answers; one more start if the first died of PORT_RACE."""
        self._scratch = None if log else tempfile.TemporaryDirectory(prefix="flexserve-server-")
        self.log = log or Path(self._scratch.name) / "serve.log"
        for attempt in (1, 2):
            self._log_file = self.log.open("w" if attempt == 1 else "a")
            if attempt == 2:
                self._log_file.write(f"--- started again: the first start died of {self.PORT_RACE!r} ---\n")
                self._log_file.flush()
            self.process = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True, **popen
            )
            try:
                self._wait(ready_path, timeout_s)
                return
            except RuntimeError:
                self.stop()
                if attempt == 2 or self.PORT_RACE not in self._tail():
                    raise

    def _tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"

    def _wait(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s:\n{self._tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by `bentoml serve` and its worker processes."""
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_group(self.process)
        self._log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class RayServeProcess(ServerProcess):
    """Ray's `serve run` of a Serve config with one application (`import_path`, e.g.
    `serving.rayserve:app`, built with `args`) behind Ray's HTTP proxy on 127.0.0.1, on a local Ray
    that it starts and stops. `cpu_seconds()` covers Ray's own processes too (they are its children)."""

    def __init__(
        self,
        import_path: str,
        args: dict,
        env: dict | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
        port: int | None = None,
        ready_path: str = "/",
        timeout_s: float = 180.0,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._config = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="flexserve-serve-")
        arguments = ", ".join(f"{key}: {value!r}" for key, value in args.items())
        self._config.write(
            f"http_options: {{host: 127.0.0.1, port: {self.port}}}\n"
            "logging_config: {enable_access_log: false, log_level: WARNING}\n"
            f"applications:\n  - name: app\n    route_prefix: /\n    import_path: {import_path}\n"
            f"    args: {{{arguments}}}\n"
        )
        self._config.flush()
        # preexec_fn: so that SIGINT stops it, even from a background job
        self._start(
            [RAY_SERVE, "run", self._config.name], log, cwd, env, ready_path, timeout_s, preexec_fn=interruptible
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # as Ctrl-C: `serve run` shuts Serve and its Ray down
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        super().stop()
        self._config.close()
