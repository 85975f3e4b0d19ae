"""`loadtest.servers.ServerProcess` with a stand-in server command (a few lines of Python): a start
that dies of BentoML's circus port race gets exactly one more; any other death fails at once."""

from __future__ import annotations

import sys

import httpx
import pytest

from loadtest.servers import ServerProcess

# Dies like BentoML's arbiter the first `deaths` times (counted in a file), then answers /readyz.
STAND_IN = """
import sys, http.server
from pathlib import Path
count, deaths, message = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
starts = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(starts))
if starts <= deaths:
    print(message, flush=True)
    sys.exit(1)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(str(starts).encode())
http.server.HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Ready).serve_forever()
"""


def stand_in(tmp_path, deaths: int, message: str = ServerProcess.PORT_RACE) -> list[str]:
    return [sys.executable, "-c", STAND_IN, str(tmp_path / "starts"), str(deaths), message]


def test_a_start_lost_to_the_port_race_is_started_once_more(tmp_path):
    with ServerProcess(command=stand_in(tmp_path, deaths=1), log=tmp_path / "serve.log", timeout_s=30) as server:
        assert httpx.get(server.url + "/readyz").text == "2"  # the second start answers
        assert "started again" in server.log.read_text()


def test_the_port_race_twice_fails_with_the_log(tmp_path):
    with pytest.raises(RuntimeError, match="exited with 1") as failure:
        ServerProcess(command=stand_in(tmp_path, deaths=2), timeout_s=30)
    assert ServerProcess.PORT_RACE in str(failure.value)
    assert (tmp_path / "starts").read_text() == "2"


def test_any_other_death_is_not_retried(tmp_path):
    with pytest.raises(RuntimeError, match="no such model"):
        ServerProcess(command=stand_in(tmp_path, deaths=1, message="no such model"), timeout_s=30)
    assert (tmp_path / "starts").read_text() == "1"
