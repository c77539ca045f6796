"""The HTML report as a reviewer opens it: in headless Chromium, over file://, through the DevTools
protocol (websocket-client from PyPI; Chromium from Debian, which .ci/run installs)."""

import base64
import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import signoff  # noqa: F401  (the package must import before a kernel does)
from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.simulator import Fault

from conftest import SIM_PROFILE, phasegate

START = datetime(2026, 1, 28, 14, 45, 1, tzinfo=timezone.utc)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One Chromium tab over the DevTools protocol: every console message, exception and request."""

    def __init__(self, ws):
        self.ws, self.ids, self.events = ws, itertools.count(1), []

    def call(self, method, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event, limit_s=60):
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            if any(e.get("method") == event for e in self.events):
                return
            self.ws.settimeout(max(0.1, end - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("needs Chromium: apt-get install -y chromium (.ci/run installs it)")
    import websocket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # As the workplace's probe runs it: no sandbox as root, and no background traffic of its own.
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tabs = None
        for _ in range(200):
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1))
                if any(t["type"] == "page" for t in tabs):
                    break
            except OSError:
                time.sleep(0.1)
        tab = next(t for t in tabs if t["type"] == "page")
        ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        yield Page(ws)
        ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_html_report_in_headless_chromium(tmp_path, browser):
    data = tmp_path / "data"
    history(load_profile(SIM_PROFILE), [Fault("server_error", start_s=3600, count=2, probes=("list",))],
            START.timestamp(), START.timestamp() + 24 * 3600, data, seed=5)
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", "phase1-staging-canary",
                    "--start", START.isoformat(), "--hours", "24", "--as-of", (START + timedelta(hours=25)).isoformat(),
                    "--out", tmp_path / "r", "--formats", "html", timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr
    (html,) = (tmp_path / "r").rglob("signoff.html")
    p = browser
    for domain in ("Page", "Runtime", "Log", "Network"):
        p.call(f"{domain}.enable")
    p.call("Page.navigate", url=html.as_uri())
    p.wait_for("Page.loadEventFired")
    text = p.call("Runtime.evaluate", expression="document.querySelector('.banner h1').innerText")["result"]["value"]
    assert text == "SIMULATED · VERDICT: NO-GO"
    assert p.call("Runtime.evaluate", expression="document.title")["result"]["value"] == \
        "Phase sign-off: phase1-staging-canary — NO-GO"
    shot = base64.b64decode(p.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "page1.png").write_bytes(shot)
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    errors = [e for e in p.events if e.get("method") in ("Runtime.exceptionThrown",)
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    urls = {e["params"]["request"]["url"] for e in p.events if e.get("method") == "Network.requestWillBeSent"}
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), sorted(urls)[:5]
