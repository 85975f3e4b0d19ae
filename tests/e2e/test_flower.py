"""Flower's deployment runtime, for real: a SuperLink and two SuperNodes on this machine (each node
one partition of the users), and `flwr run` submitting FlexServe's Flower App (training/flower) to
them, as the README's commands do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.process import free_port
from training.federated import RESULT_SUMMARY

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout_s} s: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_superlink_and_two_supernodes_train_the_recommender(tmp_path):
    link_port = free_port()
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        processes.append(process)
        return process, log

    try:
        link, link_log = start(
            "superlink", "flower-superlink", "--insecure", "--port", str(link_port), "--database", ":flwr-in-memory:"
        )
        wait_for_port(link_port, link, link_log)
        for partition in (0, 1):
            node_port = free_port()
            node, node_log = start(
                f"supernode{partition}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--port",
                str(node_port),
                "--node-config",
                f"partition-id={partition} num-partitions=2",
            )
            wait_for_port(node_port, node, node_log)
        out = tmp_path / "result"
        run = subprocess.run(
            [str(BIN / "flwr"), "run", "training/flower", "local", "--stream",
             "--run-config", f"rounds=2 clients=2 synthetic=true out='{out}'"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "[flexserve] round 2/2: federated val RMSE" in run.stdout + run.stderr
        summary = json.loads((out / RESULT_SUMMARY).read_text())
        assert [r["round"] for r in summary["history"]] == [1, 2]
        assert all(r["clients"] == 2 for r in summary["history"])  # both nodes trained every round
        assert summary["final"]["test"]["ratings"] > 0 and summary["final"]["test"]["rmse"] > 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
