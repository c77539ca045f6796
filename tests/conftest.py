"""Shared fixtures: real simulator servers on 127.0.0.1 and profiles pointed at them."""

import os
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from phasegate.simulator import start_server

# Every test speaks to 127.0.0.1 directly: a proxy in the caller's environment (phasegate honours
# HTTPS_PROXY/HTTP_PROXY like requests) must not reroute them; the proxy tests set their own.
for _name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.lower(), None)

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
SIM_PROFILE = PROFILES / "simulator.toml"


def stopping(build):
    """A factory fixture's body: tests make servers with build(...); each is shut down after the test."""
    made = []

    def make(*args, **kw):
        srv = build(*args, **kw)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()


class LoopbackServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a free port), serving from a background thread."""

    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def sim():
    """Factory: sim(scenario=..., schedule=..., request_log=...) -> running server, stopped after."""
    yield from stopping(lambda scenario="healthy", **kw: start_server(0, scenario, hang_s=kw.pop("hang_s", 10.0), **kw))


def free_port() -> int:
    """A port nothing listens on now (for servers that take a port number, not 0)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url(srv) -> str:
    return f"http://127.0.0.1:{srv.port}"


def write_profile(tmp_path: Path, body: str, name="p.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def fast_profile(tmp_path: Path, base_url: str, interval="1s", timeout="0.8s", extra="", name="p.toml") -> Path:
    """The simulator profile on a short schedule, for tests that need many samples quickly;
    `extra` goes on in [target] (or opens tables of its own)."""
    return write_profile(tmp_path, f'''
extends = "{SIM_PROFILE}"
[target]
name = "test-sim"
base_url = "{base_url}"
interval = "{interval}"
timeout = "{timeout}"
{extra}
''', name)


def phasegate(*args, env=None, timeout=120, check=False, cwd=ROOT):
    """Run the installed CLI as a user would; returns CompletedProcess with text output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "phasegate.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, check=check,
                          cwd=cwd)


@pytest.fixture
def sim_proc():
    """Factory: a simulator in its own process (no GIL shared with the probes); returns its base URL."""
    procs = []

    def make(*args):
        proc = subprocess.Popen([sys.executable, "-m", "phasegate.cli", "simulate", "serve", "--port", "0", *map(str, args)],
                                cwd=ROOT, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stderr.readline()
        assert line.startswith("simulator on "), line
        return line.split()[2]

    yield make
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


# The longest tests first: xdist hands tests out in collection order, and a 4-minute test that
# starts last runs alone at the end while the other worker idles (the suite's wall time is the
# longer worker's). Longest known first, then the other slow ones, then the rest, each in order.
_LONGEST = ("test_rollout_drill.py", "test_spark.py", "test_scheduling.py", "test_s3.py", "test_reliability.py")


def pytest_collection_modifyitems(session, config, items):
    def weight(item):
        name = item.path.name
        if name in _LONGEST:
            return _LONGEST.index(name)
        return len(_LONGEST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=weight)  # stable: the order within each group is kept
