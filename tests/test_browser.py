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


def _open(p, path):
    p.events.clear()
    p.call("Page.navigate", url=path.as_uri())
    p.wait_for("Page.loadEventFired")
    errors = [e for e in p.events if e.get("method") in ("Runtime.exceptionThrown",)
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == [], errors
    urls = {e["params"]["request"]["url"] for e in p.events if e.get("method") == "Network.requestWillBeSent"}
    assert all(u.startswith(("file://", "data:")) for u in urls), sorted(urls)[:5]
    return p.call("Runtime.evaluate", expression="document.body.innerText")["result"]["value"]


@pytest.mark.slow
def test_every_run_is_indexed_failures_kept_runs_compared_and_retention_spares_records(tmp_path, browser):
    import nbformat

    from phasegate.errors import ReportError
    from phasegate.report import NOTEBOOK, make_report

    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable")
    data, out, phase = tmp_path / "data", tmp_path / "reports", "phase1-staging-canary"
    # Three hours; 500s on list in the second one only.
    history(load_profile(SIM_PROFILE), [Fault("server_error", start_s=5400, end_s=5600, probes=("list",))],
            START.timestamp(), START.timestamp() + 3 * 3600, data, seed=7)
    codes = []
    for h in (1, 2, 3):  # an hourly report of the hour just gone
        end = (START + timedelta(hours=h)).isoformat()
        res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", phase, "--end", end,
                        "--hours", "1", "--as-of", end, "--out", out, "--formats", "html", "-q", timeout=300)
        codes.append(res.returncode)
        assert res.stderr == "", res.stderr  # -q: no progress lines
        assert f"index {out / phase / 'index.html'}" in res.stdout
    assert codes == [13, 10, 13], codes  # INCONCLUSIVE (one hour of 24), NO-GO, INCONCLUSIVE
    # A run that fails in a cell after the analysis: kept with its notebook, named, indexed.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('raise RuntimeError("the plot cell broke")'))
    broken = tmp_path / "nb" / "broken.ipynb"
    broken.parent.mkdir()
    nbformat.write(nb, broken)
    end = (START + timedelta(hours=3)).isoformat()
    with pytest.raises(ReportError) as exc:
        make_report(SIM_PROFILE, data, phase, None, end=end, hours=1, out_root=out, formats="html",
                    notebook=broken, as_of=end)
    failed_dir = out / phase / "20260128T174501Z.failed"
    assert f"the failed run is kept in {failed_dir}" in str(exc.value) and "the plot cell broke" in str(exc.value)
    kept = nbformat.read(failed_dir / "signoff.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in kept.cells for o in c.get("outputs", []))  # error at its cell
    assert json.loads((failed_dir / "failure.json").read_text())["parameters"]["phase"] == phase

    idx = json.loads((out / phase / "index.json").read_text())
    assert [(r["status"], r["verdict"]) for r in idx["runs"]] == [
        ("ok", "INCONCLUSIVE"), ("ok", "NO-GO"), ("ok", "INCONCLUSIVE"), ("failed", None)]
    assert idx["runs"][3]["folder"] == failed_dir.name and "the plot cell broke" in idx["runs"][3]["error"]
    assert idx["runs"][1]["failed"] == ["no_5xx", "error_rate"]
    assert "(see " + str(failed_dir) in idx["runs"][3]["error"]
    assert idx["runs"][2]["changes"]["resolved"] and "no_5xx" in idx["runs"][2]["changes"]["resolved"]
    # The failed run's own document never counts as a report of the phase.
    from phasegate.rollout import latest_report
    assert latest_report(out, phase)[1].parent.name == idx["runs"][2]["folder"]

    text = _open(browser, out / phase / "index.html")
    assert "RUN FAILED" in text and text.count("INCONCLUSIVE") >= 2 and "NO-GO" in text and "no_5xx: failed → passed" in text
    text = _open(browser, out / "index.html")
    assert phase in text and "NO-GO" not in text.split(phase, 1)[1].split("\n", 1)[0]  # the latest is INCONCLUSIVE

    a, b = (out / phase / r["folder"] for r in idx["runs"][1:3])
    res = phasegate("diff", a, b)
    assert res.returncode == 0 and "verdict NO-GO → INCONCLUSIVE" in res.stdout
    assert "no_5xx: failed → passed; measured 40 → 0" in res.stdout and "resolved: error_rate, no_5xx" in res.stdout, \
        res.stdout
    as_json = json.loads(phasegate("diff", a, b, "--json").stdout)
    assert as_json["resolved"] == sorted(as_json["resolved"]) and "no_5xx" in as_json["resolved"]
    bad = phasegate("diff", a, tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a report folder" in bad.stderr

    # Retention: keep one interim report and no failed run; the acknowledged NO-GO stays whatever.
    assert phasegate("approve", a, "--acknowledge", "--by", "oncall-anna").returncode == 0
    end = (START + timedelta(hours=3)).isoformat()
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", phase, "--end", end, "--hours", "2",
                    "--as-of", end, "--out", out, "--formats", "html", "--keep-failed", "0", "--keep-interim", "1",
                    timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr
    left = sorted(p.name for p in (out / phase).iterdir() if p.is_dir())
    assert a.name in left and failed_dir.name not in left and idx["runs"][0]["folder"] not in left
    # The new run's window ends where the third hour's did: it rewrote that folder (an interim
    # report of the same window), which the index keeps listing as replaced.
    assert left == [a.name, b.name], left
    assert f"retention: removed 2 old run(s): {failed_dir.name}, {idx['runs'][0]['folder']}" in res.stdout, res.stdout
    after = json.loads((out / phase / "index.json").read_text())
    assert [(r["folder"], r["status"], r["verdict"]) for r in after["runs"]] == [
        (a.name, "ok", "NO-GO"), (b.name, "replaced", "INCONCLUSIVE"), (b.name, "ok", "NO-GO")]
    assert after["runs"][0]["approval"]["by"] == "oncall-anna" and after["runs"][0]["approval"]["kind"] == "acknowledgement"
    assert phasegate("verify", a).returncode == 0  # the index never writes inside a report folder
