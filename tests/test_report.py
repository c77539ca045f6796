"""Verdicts on simulator histories with known ground truth, and the rendered report."""

import io
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from phasegate import signoff
from phasegate.probe import ERROR_OUTCOMES
from phasegate.profile import load_profile
from phasegate.history import history
from phasegate.simulator import Fault
from phasegate.store import read_samples

from conftest import ROOT, SIM_PROFILE, phasegate

START = datetime(2026, 1, 28, 14, 45, 1, tzinfo=timezone.utc)  # the seed's window
END = START + timedelta(hours=24)
AFTER = END + timedelta(minutes=1)
PHASE = "phase1-staging-canary"
H = 3600.0


def make(tmp_path, faults, hours=24.0, seed=5):
    data = tmp_path / "data"
    history(load_profile(SIM_PROFILE), faults, START.timestamp(), START.timestamp() + hours * H, data, seed=seed)
    return data


def run(data, as_of=AFTER, **kw):
    return signoff.run(SIM_PROFILE, data, PHASE, start=START.isoformat(), end=END.isoformat(),
                       as_of=as_of.isoformat(), **kw)


def crit(doc, cid):
    return next(c for c in doc["criteria"] if c["id"] == cid)


def failed(doc):
    return sorted(c["id"] for c in doc["criteria"] if c["passed"] is False)


def test_clean_24h_is_go(tmp_path):
    doc = run(make(tmp_path, [])).doc
    assert doc["verdict"] == "GO", doc["reason"]
    assert all(c["passed"] for c in doc["criteria"])
    assert doc["overall"]["samples"] == 3 * 17280 + 1440
    assert doc["coverage"]["ratio"] == 1.0


def test_single_500_is_no_go_with_scenario_1(tmp_path):
    f = Fault("server_error", start_s=5 * H, count=1, probes=("list",))
    doc = run(make(tmp_path, [f])).doc
    assert f.used == 1
    assert doc["verdict"] == "NO-GO"
    assert failed(doc) == ["no_5xx"]
    assert crit(doc, "no_5xx")["measured"] == 1
    assert doc["probes"]["list"]["status_counts"]["500"] == 1
    assert doc["runbook"][0]["title"] == "Scenario 1: 5xx Errors Detected"
    assert doc["runbook"][0]["criterion"] == "no_5xx"


def test_flags_off_period_is_no_go_on_feature_disabled(tmp_path):
    f = Fault("flags_off", start_s=6 * H, end_s=6.5 * H, probes=("list", "suggestions", "execute"))
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "NO-GO"
    assert "no_feature_disabled" in failed(doc)
    assert doc["overall"]["feature_disabled"] == f.used > 0
    assert crit(doc, "no_feature_disabled")["measured"] == f.used
    assert doc["runbook"][0]["title"].startswith("Scenario 2")


def test_flags_seen_off_on_health_is_no_go(tmp_path):
    f = Fault("flags_off", start_s=2 * H, end_s=2.25 * H, probes=("health",))
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "NO-GO"
    assert crit(doc, "no_feature_disabled")["measured"] == f.used  # each health sample showed flags off
    assert doc["flags"]["off_samples"] == {name: f.used for name in doc["flags"]["last"]}


def test_handler_loss_is_no_go(tmp_path):
    f = Fault("handler_loss", start_s=10 * H, end_s=10.5 * H, probes=("health",))
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "NO-GO"
    assert failed(doc) == ["no_anomalies", "service_healthy"]
    assert crit(doc, "service_healthy")["measured"] == f.used
    assert doc["health"]["min_loaded"] == 3


def test_rollback_is_no_go(tmp_path):
    f = Fault("deploy", start_s=8 * H, end_s=9 * H, params={"deployment": "dep-new"})
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "NO-GO"
    assert "no_rollback" in failed(doc)
    assert [s["id"] for s in doc["deployments"]["sequence"]] == ["dep-d5t1t6ngi27c73cllsr0", "dep-new",
                                                                 "dep-d5t1t6ngi27c73cllsr0"]
    assert crit(doc, "no_rollback")["measured"] == 1
    assert crit(doc, "no_rollback")["first"].startswith("2026-01-28T23:45:0")  # back at 9 h
    # After a rollback, the runbook does not say "consider a rollback": it says one happened.
    (step,) = [r for r in doc["runbook"] if r["criterion"] == "no_rollback"]
    assert step["title"] == "Scenario 4: Rollback Detected" and "do not roll back again" in step["steps"][0]


def test_deploy_change_without_return_is_review(tmp_path):
    doc = run(make(tmp_path, [Fault("deploy", start_s=8 * H, params={"deployment": "dep-new"})])).doc
    assert doc["verdict"] == "REVIEW"
    assert failed(doc) == ["no_anomalies"]


def test_execute_p99_12s_is_review_and_matches_numpy(tmp_path):
    f = Fault("slow_execute", rate=0.03, probes=("execute",), params={"latency_s": (12.0, 12.5)})
    data = make(tmp_path, [f])
    doc = run(data).doc
    assert doc["verdict"] == "REVIEW"
    assert failed(doc) == ["execute_p99"]
    df = read_samples(data, START, END)
    for probe in ("execute", "health", "list", "suggestions"):
        lat = df[(df["probe"] == probe) & df["status"].notna() & ~df["outcome"].isin(list(ERROR_OUTCOMES))]["latency_ms"].to_numpy()
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        s = doc["probes"][probe]
        assert (s["p50_ms"], s["p95_ms"], s["p99_ms"]) == (round(p50, 3), round(p95, 3), round(p99, 3))
    assert 12000 <= crit(doc, "execute_p99")["measured"] <= 12500


def test_two_percent_timeouts_is_review(tmp_path):
    # On the endpoints: a soft target. (A health check that hangs is a hard failure: below.)
    f = Fault("hang", rate=0.02, probes=("list", "suggestions", "execute"))
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "REVIEW", doc["reason"]
    assert failed(doc) == ["error_rate"]
    assert doc["overall"]["outcome_counts"]["timeout"] == doc["overall"]["errors"] == f.used
    assert crit(doc, "error_rate")["measured"] == round(f.used / doc["overall"]["samples"], 6) > 0.01


def test_health_hanging_two_hours_is_no_go_on_service_healthy(tmp_path):
    # A health check that does not answer is not healthy: every timeout counts, with its times.
    f = Fault("hang", start_s=10 * H, end_s=12 * H, probes=("health",))
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "NO-GO", doc["reason"]
    c = crit(doc, "service_healthy")
    assert c["passed"] is False and c["state"] == "failed"
    assert c["measured"] == f.used == 2 * 3600 / 5
    assert c["first"].startswith("2026-01-29T00:45:0") and c["last"].startswith("2026-01-29T02:44:5")
    assert "timeout 1440" in c["detail"]
    assert doc["runbook"][0]["title"] == "Scenario 3: Service Unhealthy"


def test_latency_target_ranks_successful_responses_only(tmp_path):
    # Every execute call answers 500 quickly: there is no successful latency to rank, so the P99
    # target is not met by fast errors (inconclusive), and the 5xx criterion fails instead.
    f = Fault("server_error", probes=("execute",))
    doc = run(make(tmp_path, [f])).doc
    c = crit(doc, "execute_p99")
    assert c["passed"] is None and c["measured"] is None, c
    assert "none of 1440 execute samples succeeded" in c["detail"]
    assert doc["probes"]["execute"]["p99_ms"] is None and doc["probes"]["execute"]["latency_n"] == 0
    assert crit(doc, "no_5xx")["passed"] is False and doc["verdict"] == "NO-GO"


def test_twelve_hours_into_clean_window_is_pending(tmp_path):
    data = make(tmp_path, [], hours=12)
    doc = run(data, as_of=START + timedelta(hours=12)).doc
    assert doc["verdict"] == "PENDING"
    c = crit(doc, "window_complete")
    assert c["passed"] is None and c["state"] == "pending"  # open, not failed
    assert "12 h 0 m to go" in c["detail"]
    assert [x["id"] for x in doc["criteria"] if x["state"] == "failed"] == []


def test_six_hour_collector_outage_is_inconclusive(tmp_path):
    f = Fault("outage", start_s=9 * H, end_s=15 * H)
    doc = run(make(tmp_path, [f])).doc
    assert doc["verdict"] == "INCONCLUSIVE"
    assert failed(doc) == []
    assert doc["coverage"]["longest_gap_s"] == pytest.approx(6 * H, abs=10)
    assert doc["coverage"]["longest_gap_cause"].startswith("collector down")
    assert "coverage too thin" in doc["reason"]


def test_too_few_execute_samples_is_inconclusive_not_pass(tmp_path):
    data = make(tmp_path, [])
    doc = signoff.run(SIM_PROFILE, data, PHASE, start=START.isoformat(), hours=1,
                      as_of=AFTER.isoformat()).doc
    assert crit(doc, "execute_p99")["passed"] is None
    assert "at least 299 needed for a 95% upper bound" in crit(doc, "execute_p99")["detail"]


@pytest.mark.parametrize("args,message", [
    (["--start", END.isoformat(), "--end", START.isoformat()], "is not after its start"),
    (["--start", "yesterday", "--hours", "24"], "start is not an ISO 8601 time: 'yesterday'"),
    (["--start", START.isoformat(), "--hours", "24", "--phase", "phase9"], "unknown phase 'phase9'"),
    (["--start", START.isoformat(), "--hours", "24", "--profile", "profiles/nope.toml"],
     "profile not found: profiles/nope.toml"),
    (["--start", START.isoformat(), "--hours", "24", "--data", "/nonexistent/pg"],
     "data dir does not exist: /nonexistent/pg"),
    (["--hours", "24", "--profile", ""], "missing --profile (or give --plan)"),
    (["--latest"], "--latest needs --plan (the plan says which phase is in progress)"),
    (["--plan", "profiles/fault-lens-rollout.toml", "--start", START.isoformat()],
     "give --profile or --plan, not both (the plan names each phase's profile)"),
    (["--plan", "profiles/fault-lens-rollout.toml", "--profile", "", "--latest", "--phase", PHASE],
     "with --plan, give --phase or --latest (one of them)"),
    (["--start", START.isoformat(), "--notify", "sometimes"], "Invalid value for '--notify'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    base = {"--profile": str(SIM_PROFILE), "--data": str(tmp_path), "--phase": PHASE}
    for k in list(base):
        if k in args:
            base.pop(k)
    if "" in args:  # an option given as "" is left out: the user did not pass it
        i = args.index("")
        args = args[:i - 1] + args[i + 1:]
    res = phasegate("report", *[x for kv in base.items() for x in kv], *args, "--out", tmp_path / "r")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phasegate: error: ") and message in lines[0]


@pytest.mark.slow
def test_empty_window_exits_2_naming_it(tmp_path):
    data = make(tmp_path, [], hours=1)
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", PHASE,
                    "--start", (START + timedelta(days=3)).isoformat(), "--hours", "24",
                    "--out", tmp_path / "r", "--formats", "html")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("phasegate: error: no samples in ")


@pytest.mark.slow
def test_report_renders_four_files_and_papermill_agrees(tmp_path):
    data = make(tmp_path, [Fault("server_error", start_s=5 * H, count=1, probes=("list",))])
    # A corrupt file inside the window: the report still renders and names it.
    bad = data / "samples" / "date=2026-01-29" / "torn.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", PHASE,
                    "--start", START.isoformat(), "--end", END.isoformat(), "--out", tmp_path / "reports",
                    timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr
    folder = tmp_path / "reports" / PHASE / "20260129T144501Z"
    assert sorted(p.name for p in folder.iterdir()) == ["signoff.html", "signoff.ipynb", "signoff.json", "signoff.pdf"]
    # No staging left behind; beside the report, the phase's index of runs.
    assert sorted(p.name for p in folder.parent.iterdir()) == ["20260129T144501Z", "index.html", "index.json"]
    doc = json.loads((folder / "signoff.json").read_text())
    assert doc["verdict"] == "NO-GO"
    assert doc["inputs"]["excluded"][0]["file"] == str(bad)
    assert str(bad) in res.stdout
    assert all(len(f["sha256"]) == 64 for f in doc["inputs"]["files"])
    reader = PdfReader(folder / "signoff.pdf")
    pdf_text = "".join(page.extract_text() for page in reader.pages)
    assert "VERDICT: NO-GO" in pdf_text
    # Page 1 decides: each failed criterion's title, its first failure time, its runbook step.
    page1 = reader.pages[0].extract_text()
    for c in (c for c in doc["criteria"] if c["state"] == "failed"):
        assert c["title"] in page1 and c["first"] in page1, c["id"]
        assert c["runbook"]["title"] in page1
    assert "Sign-off" in page1 and doc["provenance"]["profile_sha256"] in page1
    n = len(reader.pages)
    for i, page in enumerate(reader.pages, 1):
        text = page.extract_text()
        assert f"Page {i} of {n}" in text and "SIMULATED" in text, i
    assert reader.metadata.title == "Phase sign-off: phase1-staging-canary — NO-GO"
    assert reader.metadata.creator.startswith("phasegate ")
    for c in doc["criteria"]:
        assert c["id"] in pdf_text
    assert "Scenario 1: 5xx Errors Detected" in pdf_text
    html = (folder / "signoff.html").read_text()
    assert "signoff.run(" not in html and "display(HTML" not in html  # no code cells
    assert not re.search(r'<(script|img|link|iframe)[^>]+(src|href)="(https?:)?//', html)  # self-contained
    assert "<img" in html and all("src=\"data:image/png;base64," in t for t in html.split("<img")[1:])
    # The PDF's styles came pre-parsed from the export process: the pages must be exactly those
    # of WeasyPrint rendering the HTML as it stands.
    from weasyprint import HTML
    plain = PdfReader(io.BytesIO(HTML(string=html, base_url=str(folder)).write_pdf()))
    ours = PdfReader(folder / "signoff.pdf")
    assert len(plain.pages) == len(ours.pages) > 1
    assert [p.get_contents().get_data() for p in plain.pages] == [p.get_contents().get_data() for p in ours.pages]
    # A later run of the same window that fails leaves the earlier report whole.
    empty = tmp_path / "empty"
    empty.mkdir()
    failed_run = phasegate("report", "--profile", SIM_PROFILE, "--data", empty, "--phase", PHASE,
                           "--start", START.isoformat(), "--end", END.isoformat(), "--out", tmp_path / "reports",
                           timeout=300)
    assert failed_run.returncode == 2 and "no samples" in failed_run.stderr
    assert json.loads((folder / "signoff.json").read_text()) == doc
    assert sorted(p.name for p in folder.parent.iterdir()) == ["20260129T144501Z", "index.html", "index.json"]
    # The same notebook run by papermill alone gives the same verdict and counts.
    out = tmp_path / "direct.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "phase_signoff.ipynb"), str(out),
                    "-p", "profile", str(SIM_PROFILE), "-p", "data_dir", str(data), "-p", "phase", PHASE,
                    "-p", "start", START.isoformat(), "-p", "end", END.isoformat(),
                    "-p", "out_dir", str(tmp_path / "direct"), "-p", "as_of", doc["as_of"]],
                   check=True, capture_output=True, cwd=ROOT / "notebooks", timeout=300)
    direct = json.loads((tmp_path / "direct" / "signoff.json").read_text())
    assert direct["verdict"] == doc["verdict"]
    assert direct["criteria"] == doc["criteria"]
    assert direct["probes"] == doc["probes"] and direct["overall"] == doc["overall"]


def test_same_inputs_same_signoff_and_hashes_track_bytes(tmp_path):
    data = make(tmp_path, [Fault("server_error", start_s=5 * H, count=3)])
    a = run(data).doc
    b = run(data).doc
    a.pop("generated_at"), b.pop("generated_at")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["rerun"].startswith("phasegate report --profile ") and f"--as-of {AFTER:%Y-%m-%dT%H:%M:%SZ}" in a["rerun"]
    # One changed byte in an input (inside the footer's created_by string: still a valid file).
    f = Path(a["inputs"]["files"][0]["path"])
    raw = bytearray(f.read_bytes())
    i = raw.index(b"parquet-cpp-arrow")
    raw[i] = ord("P")
    f.write_bytes(bytes(raw))
    c = run(data).doc
    assert c["inputs"]["files"][0]["sha256"] != a["inputs"]["files"][0]["sha256"]
    assert c["inputs"]["files"][1:] == a["inputs"]["files"][1:]
    assert c["verdict"] == a["verdict"] and c["overall"] == a["overall"]


FLOOR_NB = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "print('hello')",
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": "hello exporter\n"}]}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.mark.slow
def test_export_helper_process_writes_both_files_and_says_why_it_failed(tmp_path):
    # The helper gets ready while the kernel runs; its outcome, good or bad, reaches the caller.
    from phasegate.errors import ReportError
    from phasegate.export import Exporter
    nb = tmp_path / "one.ipynb"
    nb.write_text(json.dumps(FLOOR_NB))
    with Exporter() as ex:
        ex.run(nb, tmp_path / "one.html", tmp_path / "one.pdf")
    assert "hello exporter" in (tmp_path / "one.html").read_text()
    assert "hello exporter" in PdfReader(tmp_path / "one.pdf").pages[0].extract_text()
    # A notebook that is not JSON: the helper's own last error line, as one ReportError line.
    torn = tmp_path / "torn.ipynb"
    torn.write_text("{not json")
    with pytest.raises(ReportError) as err, Exporter() as ex:
        ex.run(torn, tmp_path / "torn.html", None)
    assert "export process exited 1" in str(err.value) and "JSON" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "torn.html").exists()
    # The PDF cannot be written: WeasyPrint's error comes back as the export's failure.
    with pytest.raises(ReportError, match=r"^PDF export failed: .*No such file"), Exporter() as ex:
        ex.run(nb, None, tmp_path / "missing-dir" / "one.pdf")
    # Left without a request (the notebook failed first): the helper is stopped, not orphaned.
    with Exporter() as ex:
        proc = ex._proc
    assert proc.poll() is not None


@pytest.mark.slow
def test_explore_notebook_runs_on_a_faulty_day(tmp_path):
    # The interactive notebook, executed as papermill runs it: its cells find the injected failures.
    data = make(tmp_path, [Fault("server_error", start_s=5 * H, count=3, probes=("list",))])
    out = tmp_path / "explore.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", "explore.ipynb", str(out), "-p", "data_dir", str(data),
                    "-p", "end", END.isoformat(), "-p", "probe", "list"],
                   cwd=ROOT / "notebooks", check=True, capture_output=True, timeout=300)
    nb = json.loads(out.read_text())
    texts = ["".join(o.get("text") or o.get("data", {}).get("text/plain", "")) for c in nb["cells"] for o in c.get("outputs", [])]
    assert texts[0].strip().endswith(f"{3 * 17280 + 1440:,} probe samples")
    assert "list  http_error     500  3" in texts[1]
    assert any("around 2026-01-28T19:45" in t.replace(" ", "T", 1) or "around 2026-01-28 19:45" in t for t in texts)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb["cells"] for o in c.get("outputs", []))


def test_an_unwritable_out_dir_is_one_line(tmp_path):
    data = tmp_path / "data"
    end = datetime.now(timezone.utc).replace(microsecond=0)
    history(load_profile(SIM_PROFILE), [], end.timestamp() - 3600, end.timestamp(), data, seed=1)
    (tmp_path / "file").write_text("not a folder")
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", "phase1-staging-canary",
                    "--end", end.isoformat(), "--hours", "1", "--out", tmp_path / "file" / "reports", "--formats", "json")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "cannot write the report under" in res.stderr and "Not a directory" in res.stderr


def _kernels_here() -> list[str]:
    """This process's children running a Jupyter kernel, exited-but-unreaped ones included."""
    import os
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if int(ppid) == os.getpid() and ("ipykernel" in cmd or state == "Z"):
            found.append(f"{stat.parent.name} {state} {cmd}")
    return found


def _sockets_here() -> set[str]:
    """This process's open sockets by inode (the kernel client's ZeroMQ channels among them)."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
        if link.startswith("socket:"):
            found.add(link)
    return found


def test_a_report_leaves_no_kernel_behind_even_when_its_notebook_fails(tmp_path):
    """The kernel's exit is awaited after the export, not before it: still awaited, on every path;
    and the connection to it is closed (a scheduler's process reports again and again)."""
    from phasegate.errors import ReportError
    from phasegate.report import make_report
    data = make(tmp_path, [], hours=1.0)
    end = (START + timedelta(hours=1)).isoformat()
    for out in ("out", "again"):
        res = make_report(SIM_PROFILE, data, PHASE, START.isoformat(), end=end, out_root=tmp_path / out,
                          formats="html", as_of=AFTER.isoformat(), notify="never")
        assert res.verdict and res.files["html"].exists()
        assert _kernels_here() == []
        if out == "out":  # the event loop's self-pipe stays for the next run: counted from here
            sockets = _sockets_here()
    # None opened since (one another test left may close meanwhile: a subset, not equal).
    assert _sockets_here() <= sockets
    nb = json.loads((ROOT / "notebooks" / "phase_signoff.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    nb["cells"] = [next(c for c in code if "parameters" in c["metadata"].get("tags", [])),
                   {"cell_type": "code", "id": "boom", "metadata": {}, "execution_count": None, "outputs": [],
                    "source": "raise RuntimeError('boom')"}]
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps(nb))
    with pytest.raises(ReportError, match="boom"):
        make_report(SIM_PROFILE, data, PHASE, START.isoformat(), end=end, out_root=tmp_path / "out2", formats="html",
                    as_of=AFTER.isoformat(), notify="never", notebook=bad)
    assert _kernels_here() == []
    assert _sockets_here() <= sockets
