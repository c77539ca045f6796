"""Issue 26: hostile services and inputs, each attack reproduced on loopback and its safe outcome
shown: every deadline total, every secret scrubbed, no criterion passing on nothing, nothing
written outside its directory, nothing hung past its deadline (+1 s)."""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import signoff
from phasegate.history import history
from phasegate.probe import run_probe
from phasegate.profile import load_profile
from phasegate.simulator import Fault
from phasegate.store import read_samples

from conftest import ROOT, SIM_PROFILE, fast_profile, phasegate, write_profile

EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
TOKEN = "tok_REFLECTEDsecret0123456789abcdef"
ROOT_NOTEBOOKS = ROOT / "notebooks"  # where the notebook runs: a COPY ... TO would land there
P1 = "phase1-staging-canary"


class RawServer:
    """A TCP server on 127.0.0.1 whose every connection is handled by handle(conn) in a thread."""

    def __init__(self, handle):
        self.handle = handle
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            conn.settimeout(30)
            request = _read_request(conn)
            self.handle(conn, self.stop, request)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def _read_request(conn) -> bytes:
    """The whole request, body included: answering before the body is read and then closing makes
    the kernel reset the connection, and the client sees ConnectionResetError instead of the answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def drip_headers(conn, stop, _request=b""):
    """HTTP/1.1 200 OK, then one header byte every 0.5 s, for as long as anyone listens."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for byte in b"X-Slow: " + b"a" * 10_000:
        if stop.wait(0.5):
            return
        conn.sendall(bytes([byte]))


@pytest.fixture
def raw():
    made = []

    def make(handle):
        srv = RawServer(handle)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.close()


# -- 2. the total deadline covers the status line and headers ------------------------------------


def test_dripping_headers_are_cut_at_the_total_deadline(tmp_path, raw):
    srv = raw(drip_headers)
    profile = load_profile(fast_profile(tmp_path, srv.url, interval="3s", timeout="2s"))
    health = next(p for p in profile.probes if p.name == "health")
    t0 = time.monotonic()
    row = run_probe(profile.target, health)
    took = time.monotonic() - t0
    assert row["outcome"] == "timeout" and row["error"] == "no complete response within 2s", row
    # A hang guard, not a speed figure: the drip would last 5,000 s; a loaded machine may add seconds.
    assert took < 30

    # The one-shot check and a collector (every probe under the target's 2 s): a classified sample
    # each, nothing hung (the subprocess timeouts would fail these runs).
    one = fast_profile(tmp_path, srv.url, interval="3s", timeout="2s",
                       extra="".join(f'[[probes]]\nname = "{n}"\npath = "/v1/actions/{n}"\nexpect_status = [200]\n'
                                     for n in ("health", "list", "suggestions", "execute")))
    res = phasegate("check", "--profile", one, timeout=20)
    assert res.returncode == 1 and "TIMEOUT (no complete response within 2s)" in res.stdout, res.stdout
    data = tmp_path / "data"
    res = phasegate("collect", "--profile", one, "--data", data, "--for", "7s", "--quiet", timeout=30)
    assert res.returncode == 0, res.stderr
    df = read_samples(data, *EVER, columns=["probe", "outcome"])
    assert len(df) >= 2 and set(df["outcome"]) == {"timeout"}, df


# -- 1. a criterion that matches no sample is undecided, never a pass ---------------------------


def test_a_hard_criterion_that_matches_no_sample_never_passes(tmp_path):
    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(hours=24)
    history(load_profile(SIM_PROFILE), [], start.timestamp(), end.timestamp(), tmp_path / "data", seed=1)
    profile = write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[[checks]]
name = "acceptance_never_ran"
command = ["true"]
[criteria.typo]
kind = "hard"
metric = "http_5xx"
where = {{ tenant = "yacht-typo" }}
max = 0
[criteria.acceptance_held]
kind = "hard"
metric = "errors"
where = {{ probe = "acceptance_never_ran" }}
max = 0
''')
    doc = signoff.run(profile, tmp_path / "data", P1, start=start.isoformat(), hours=24, as_of=end.isoformat()).doc
    crit = {c["id"]: c for c in doc["criteria"]}
    for cid, sel in (("typo", "tenant=yacht-typo"), ("acceptance_held", "probe=acceptance_never_ran")):
        assert crit[cid]["passed"] is None and crit[cid]["state"] == "inconclusive", crit[cid]
        assert crit[cid]["detail"] == f"no samples match {sel}" and crit[cid]["n"] == 0
    assert doc["verdict"] == "INCONCLUSIVE" and "typo" in doc["reason"], doc["reason"]


# -- 3. a bucket's object keys cannot lead outside the mirror ------------------------------------


def test_an_s3_listing_with_dotdot_keys_writes_nothing_outside_the_cache(tmp_path):
    import pyarrow as pa
    from pyarrow import fs

    from phasegate.objstore import Location, Storage

    good = "bkt/pfx/samples/date=2026-01-01/good.parquet"
    evil = ["bkt/pfx/samples/date=2026-01-01/../../../../../x/evil.parquet",
            "bkt/pfx/samples/date=2026-01-01/../../escape.parquet",
            "bkt/pfx/samples/../../../samples/date=2026-01-01/up.parquet"]

    class Hostile(fs.FileSystemHandler):
        """An S3 listing as someone who can write the bucket makes it."""

        def get_type_name(self):
            return "hostile"

        def get_file_info_selector(self, selector):
            return [fs.FileInfo(p, fs.FileType.File, size=4) for p in [good, *evil]]

        def open_input_stream(self, path):
            return pa.BufferReader(b"PAR1")

        def normalize_path(self, path):
            return path

        def get_file_info(self, paths):
            return [fs.FileInfo(p, fs.FileType.NotFound) for p in paths]

        def _no(self, *a, **k):
            raise NotImplementedError

        create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = move = copy_file = _no
        open_input_file = open_output_stream = open_append_stream = _no

    cache = tmp_path / "cache"
    loc = Location("s3://bkt/pfx", Storage(cache_dir=str(cache)))
    loc._fs = fs.PyFileSystem(Hostile())
    before = {p for p in tmp_path.rglob("*")}
    assert loc.pull() == 1
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written and all(p.is_relative_to(cache / "bkt" / "pfx" / "samples") for p in written), written
    assert (cache / "bkt/pfx/samples/date=2026-01-01/good.parquet").read_bytes() == b"PAR1"
    assert not list(tmp_path.rglob("evil.parquet")) and not list(tmp_path.rglob("escape.parquet"))
    assert len(loc.skipped) == 3


# -- 4, 5, 11, 12. approvals: the identity is the verified signer; nothing slips past verify -----


def _signers(tmp_path, *names):
    import shutil

    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen: apt-get install -y openssh-client (.ci/run installs it)")
    keys = {}
    with open(tmp_path / "allowed_signers", "a") as fh:
        for name in names:
            key = tmp_path / f"{name}_key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], check=True)
            fh.write(f"{name}@example.org {(tmp_path / f'{name}_key.pub').read_text()}")
            keys[name] = key
    return keys, tmp_path / "allowed_signers"


def _resign(folder, key):
    (folder / "approval.json.sig").unlink()
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", key, "-n", "phasegate", folder / "approval.json"],
                   check=True, capture_output=True)


def test_a_listed_signer_cannot_sign_as_someone_else_and_unsigned_is_not_vouched_for(tmp_path):
    from test_rollout import go_report

    keys, signers = _signers(tmp_path, "mallory", "rita")
    out = go_report(tmp_path)
    assert phasegate("approve", out, "--by", "mallory@example.org", "--key", keys["mallory"]).returncode == 0
    a = json.loads((out / "approval.json").read_text())
    a["by"] = "rita@example.org"  # mallory edits the name, and signs again with her own key
    (out / "approval.json").write_text(json.dumps(a, indent=2) + "\n")
    _resign(out, keys["mallory"])
    v = phasegate("verify", out, "--allowed-signers", signers)
    assert v.returncode == 1 and "names rita@example.org but was signed as mallory@example.org" in v.stdout, v.stdout
    a["signature"]["principal"] = "rita@example.org"  # ... and the principal too: her key is not rita's
    (out / "approval.json").write_text(json.dumps(a, indent=2) + "\n")
    _resign(out, keys["mallory"])
    v = phasegate("verify", out, "--allowed-signers", signers)
    assert v.returncode == 1 and "bad signature on approval.json" in v.stdout, v.stdout
    # An unsigned approval is not vouched for by an allowed-signers file.
    for f in ("approval.json", "approval.json.sig"):
        (out / f).unlink()
    assert phasegate("approve", out, "--by", "rita@example.org").returncode == 0
    v = phasegate("verify", out, "--allowed-signers", signers)
    assert v.returncode == 1 and "is unsigned; the allowed signers can only vouch for a signed one" in v.stdout


def test_verify_names_any_file_added_after_the_approval(tmp_path):
    from test_rollout import go_report

    out = go_report(tmp_path)
    assert phasegate("approve", out, "--by", "rita@example.org").returncode == 0
    for added in ("notes.tmp", "sub/approval.json", "approvals/x/evil.txt"):
        path = out / added
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("added later")
        v = phasegate("verify", out)
        assert v.returncode == 1 and "was added after the approval" in v.stdout and added.split("/")[0] in v.stdout, \
            (added, v.stdout)
        path.unlink()
        if path.parent != out:
            shutil.rmtree(out / added.split("/")[0])
    assert phasegate("verify", out).returncode == 0


def test_act_applies_require_signature_to_an_acknowledgement_and_acknowledging_a_go_never_approves(tmp_path):
    from test_rollout import H, P1_END, P1_START, drill, gen, status

    keys, signers = _signers(tmp_path, "rita")
    outsider = tmp_path / "outsider_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", outsider], check=True)
    gen(tmp_path, "fault-lens-staging.toml", P1, datetime.now(timezone.utc) - timedelta(hours=2), 2,
        [Fault("server_error", start_s=H / 2, count=3)])
    strict = drill(tmp_path, f'require_signature = true\nallowed_signers = "{signers}"\n'
                             f'start_override = true')
    text = strict.read_text().replace("start_override = true\n", "")
    text = text.replace('start = "2026-01-28T14:45:01Z"',
                        f'start = "{(datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()}"')
    strict.write_text(text)
    so = signoff.run(None, tmp_path / "data" / P1, P1, hours=24, out_dir=tmp_path / "reports" / P1 / "nogo",
                     start=(datetime.now(timezone.utc) - timedelta(hours=2)).isoformat(), plan=strict)
    assert so.doc["verdict"] == "NO-GO"
    nogo = tmp_path / "reports" / P1 / "nogo"
    loose = tmp_path / "loose.toml"  # the same rollout without the signature rules
    loose.write_text(text.replace(f'require_signature = true\nallowed_signers = "{signers}"\n', ""))
    ack = phasegate("approve", nogo, "--acknowledge", "--by", "rita@example.org", "--key", outsider, "--plan", loose)
    assert ack.returncode == 0, ack.stderr
    res = phasegate("act", "--plan", strict, "--execute", cwd=tmp_path)
    assert res.returncode == 2 and "is not acknowledged" in res.stderr and "--key SSH_KEY" in res.stderr, res.stderr
    # approve --acknowledge on a GO records an acknowledgement, which never completes a phase.
    from test_rollout import go_report
    other = tmp_path / "other"
    other.mkdir()
    out = go_report(other)
    res = phasegate("approve", out, "--acknowledge", "--by", "rita@example.org")
    assert res.returncode == 0 and res.stdout.startswith("acknowledgement of GO report"), res.stdout
    assert json.loads((out / "approval.json").read_text())["kind"] == "acknowledgement"
    st = status(other, P1_END + timedelta(minutes=30))
    assert "acknowledged by rita@example.org, not approved" in st.stdout and "NEXT: proceed to Phase 2" not in st.stdout
    assert P1_START  # the drill's seed window


def test_status_of_a_complete_window_awaiting_approval_says_so(tmp_path):
    from test_rollout import P1_END, go_report, status

    go_report(tmp_path)
    st = status(tmp_path, P1_END + timedelta(minutes=30))
    line = next(l for l in st.stdout.splitlines() if l.startswith("  1. "))
    assert "GO: a GO report for the phase's complete window awaits approval" in line, line
    assert "so far" not in line and "0 s of" not in line


# -- 6, 7, 9. what a hostile service answers ----------------------------------------------------


def _serve(answer):
    from test_hostile import serve

    return serve(answer)


def _token_profile(tmp_path, base):
    return fast_profile(tmp_path, base, extra='auth_header = "Authorization"\nauth_env = "TEST_TOKEN"\n'
                                              'auth_scheme = "Bearer"\nauth_optional = false', name="reflect.toml")


def test_a_service_reflecting_the_token_into_extracted_fields_stores_it_nowhere(tmp_path):
    # error.code, X-Deployment-Id, the health status and a flag all carry the bearer token back.
    def answer(path):
        body = {"error": {"code": f"LEAK {TOKEN}"}, "status": TOKEN, "handlers_loaded": 4, "handlers_total": 4,
                "feature_flags": {"FAULT_LENS_V1_ENABLED": TOKEN}}
        return (500 if "list" in path else 200, {"Content-Type": "application/json", "X-Deployment-Id": f"dep-{TOKEN}"},
                json.dumps(body).encode())

    srv = _serve(answer)
    try:
        prof = _token_profile(tmp_path, srv.base)
        env = {"TEST_TOKEN": TOKEN}
        data = tmp_path / "data"
        col = phasegate("collect", "--profile", prof, "--data", data, "--for", "4s", env=env, timeout=60)
        chk = phasegate("check", "--profile", prof, env=env, timeout=60)
    finally:
        srv.shutdown()
    assert col.returncode == 0, col.stderr
    df = read_samples(data, *EVER, columns=["error_code", "deployment_id", "health_status", "flags"])
    assert len(df) and (df["deployment_id"] == "dep-[REDACTED]").all() and "LEAK [REDACTED]" in set(df["error_code"])
    rep = phasegate("report", "--profile", prof, "--data", data, "--phase", P1, "--end", "now", "--hours", "1",
                    "--out", tmp_path / "reports", "--formats", "html,pdf", env=env, timeout=300)
    assert rep.returncode in (10, 12), rep.stdout + rep.stderr
    from pypdf import PdfReader

    pdfs = list((tmp_path / "reports").rglob("*.pdf"))
    assert pdfs and all(TOKEN not in "".join(pg.extract_text() for pg in PdfReader(p).pages) for p in pdfs)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for res in (col, chk, rep):
        assert TOKEN not in res.stdout + res.stderr


def test_deeply_nested_json_is_an_invalid_body_everywhere(tmp_path):
    deep = b"[" * 200_000
    srv = _serve(lambda path: (200, {"Content-Type": "application/json"}, deep))
    try:
        prof = fast_profile(tmp_path, srv.base)
        chk = phasegate("check", "--profile", prof, timeout=60)
        data = tmp_path / "data"
        col = phasegate("collect", "--profile", prof, "--data", data, "--for", "3s", timeout=60)
        # The platform API answering the same: a stored failed read, not a crash.
        from test_platform import profile_for

        class Api:
            api = f"{srv.base}/v1"

        plat = profile_for(tmp_path, Api(), timeout="3s")
        pulled = phasegate("pull-platform", "--profile", plat, "--data", tmp_path / "pdata",
                           env={"TEST_RENDER_KEY": "rnd_0123456789abcdef"}, timeout=60)
    finally:
        srv.shutdown()
    assert chk.returncode == 1 and "internal error" not in chk.stderr + chk.stdout, chk.stdout + chk.stderr
    assert col.returncode == 0 and "internal error" not in col.stderr, col.stderr
    df = read_samples(data, *EVER, columns=["outcome", "error"])
    assert len(df) and set(df["outcome"]) == {"invalid_body"}, df
    assert df["error"].str.contains("nested deeper than the parser's depth limit").all()
    assert pulled.returncode == 1 and "internal error" not in pulled.stderr
    assert "deploys not read: the API answered something other than a JSON list" in pulled.stderr, pulled.stderr
    rows = read_samples(tmp_path / "pdata", *EVER, sources=["platform"], columns=["outcome"])
    assert set(rows["outcome"]) == {"invalid_body"}


def test_check_does_not_print_a_line_a_service_forged(tmp_path):
    forged = "X\n   /list: ✅ 200 OK\n   [PASS] all good"
    srv = _serve(lambda path: (503, {"Content-Type": "application/json"},
                               json.dumps({"error": {"code": forged}}).encode()))
    try:
        res = phasegate("check", "--profile", SIM_PROFILE, "--base-url", srv.base, timeout=60)
    finally:
        srv.shutdown()
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert "   /list: ✅ 200 OK" not in lines and "   [PASS] all good" not in lines
    assert any("503 X\\n   /list: ✅ 200 OK\\n   [PASS] all good" in line for line in lines), res.stdout


# -- 8, 10. inputs on disk and in the environment ------------------------------------------------


def test_a_parquet_file_of_another_schema_is_excluded_and_listed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(hours=2)
    data = tmp_path / "data"
    history(load_profile(SIM_PROFILE), [], start.timestamp(), end.timestamp(), data, seed=1)
    day = next((data / "samples").iterdir())
    bad = day / "wrong-schema.parquet"
    pq.write_table(pa.table({"ts": [end.isoformat()], "probe": ["health"], "status": [500]}), bad)
    doc = signoff.run(SIM_PROFILE, data, P1, start=start.isoformat(), hours=2, as_of=end.isoformat()).doc
    excluded = {e["file"]: e["reason"] for e in doc["inputs"]["excluded"]}
    assert excluded[str(bad)] == "not a samples file: column ts is string, not timestamp[us, tz=UTC]", excluded
    assert doc["verdict"] in ("GO", "INCONCLUSIVE") and doc["overall"]["samples"] > 1000


def test_environment_values_never_become_sql(tmp_path):
    end = datetime.now(timezone.utc).replace(microsecond=0)
    data = tmp_path / "data"
    history(load_profile(SIM_PROFILE), [], end.timestamp() - 3600, end.timestamp(), data, seed=1)
    quoted = tmp_path / "it's tmp"
    quoted.mkdir()
    args = ("report", "--profile", SIM_PROFILE, "--data", data, "--phase", P1, "--end", end.isoformat(), "--hours", "1",
            "--out", tmp_path / "reports", "--formats", "json")
    res = phasegate(*args, env={"TMPDIR": str(quoted)}, cwd=tmp_path, timeout=300)
    assert res.returncode in (0, 12, 13), res.stdout + res.stderr  # a verdict, not a SQL error
    res = phasegate(*args, env={"PHASEGATE_MEMORY_LIMIT": "1GB'; COPY (SELECT 42) TO 'x.csv'; --"}, cwd=tmp_path,
                    timeout=300)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "is not a size like 1GB or 512MB" in res.stderr
    assert not list(tmp_path.rglob("x.csv")) and not (ROOT_NOTEBOOKS / "x.csv").exists()


def test_act_is_not_held_by_a_platform_dripping_its_answer(tmp_path, raw, sim, monkeypatch):
    """Reads answer; the PUT's answer drips a header byte at a time: the step fails at the
    platform's 5 s deadline, is recorded, and the plan's lock is released."""
    from phasegate import act
    from test_deploys import _actions, _no_go
    from test_platform import KEY

    def handle(conn, stop, request):
        if request.startswith(b"GET"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")
        else:
            drip_headers(conn, stop)

    srv = raw(handle)
    try:
        class Api:
            api = f"{srv.url}/v1"

        monkeypatch.setenv("TEST_RENDER_KEY", KEY)
        plan, _doc = _no_go(tmp_path, sim(), Api())
        t0 = time.monotonic()
        res = act.act(plan, execute=True, by="oncall-anna")
        took = time.monotonic() - t0
    finally:
        srv.stop.set()
    assert res.failed and any("1. set FAULT_LENS_V1_ENABLED=false: FAILED (no complete response within 5s)" in l
                              for l in res.text), res.text
    assert took < 60  # a hang guard: the drip would last hours; the deadline itself is in the message above
    rows = _actions(tmp_path)
    assert list(rows["outcome"]) == ["timeout"] and rows["probe"].iloc[0] == "act.set_env"
    import fcntl
    with open(plan.reports / ".act.lock", "a+") as fh:  # released: another act may take it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_act_survives_a_platform_answering_its_writes_with_deep_json(tmp_path, raw, sim, monkeypatch):
    """Reads answer; every write answers 200 with 200,000 '[': the set_env step is done (its
    answer is not needed), the deploy trigger is unidentifiable and fails as invalid_body; both
    are recorded, nothing crashes."""
    from phasegate import act
    from test_deploys import _actions, _no_go
    from test_platform import KEY

    deep = b"[" * 200_000

    def handle(conn, stop, request):
        body = b"[]" if request.startswith(b"GET") else deep
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)

    srv = raw(handle)

    class Api:
        api = f"{srv.url}/v1"

    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    plan, _doc = _no_go(tmp_path, sim(), Api())
    res = act.act(plan, execute=True, by="oncall-anna")
    assert res.failed and any(line.startswith("  2. trigger a deploy: FAILED (the trigger answered without a deploy")
                              for line in res.text), res.text
    rows = _actions(tmp_path)
    assert list(zip(rows["probe"], rows["outcome"])) == [("act.set_env", "ok"), ("act.deploy", "invalid_body")]


@pytest.mark.slow
def test_an_approval_shows_in_a_stamped_pdf_and_verify_refuses_a_forged_or_spliced_one(tmp_path):
    from pypdf import PdfReader, PdfWriter

    from phasegate import stamp
    from phasegate.store import sha256

    keys, _signers_file = _signers(tmp_path, "rita")
    data, out = tmp_path / "data", tmp_path / "r"
    assert phasegate("simulate", "history", "--scenario", "server-errors", "--hours", "1", "--end", "2026-12-03T12:00:00Z",
                     "--data", data).returncode == 0
    rep = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", "phase1-staging-canary", "--hours", "1",
                    "--end", "2026-12-03T12:00:00Z", "--as-of", "2026-12-03T12:00:00Z", "--out", out, timeout=300)
    assert rep.returncode == 10, rep.stdout + rep.stderr
    folder = next(p for p in (out / "phase1-staging-canary").iterdir() if p.is_dir())
    res = phasegate("approve", folder, "--acknowledge", "--by", "rita@example.org", "--key", keys["rita"],
                    "--comment", "read; rolling back")
    assert res.returncode == 0 and f"the PDF with its approval page: {folder / stamp.STAMPED}" in res.stdout, res.stdout
    a = json.loads((folder / "approval.json").read_text())
    stamped, report = PdfReader(folder / stamp.STAMPED), PdfReader(folder / "signoff.pdf")
    page = " ".join(stamped.pages[0].extract_text().split())
    for text in ("ACKNOWLEDGEMENT", "rita@example.org", a["at"], "read; rolling back", "verdict NO-GO"):
        assert text in page, text
    # Long values wrap in the table: compared without the line breaks the extraction puts in.
    assert a["signature"]["key"] in "".join(page.split()) and sha256(folder / "approval.json") in "".join(page.split())
    assert len(stamped.pages) == len(report.pages) + 1
    assert stamped.metadata.title.endswith("— acknowledgement by rita@example.org")
    assert phasegate("verify", folder).returncode == 0  # made after the approval, checked apart from its hashes

    # A stamp naming another approval (a forged page) is refused ...
    good = (folder / stamp.STAMPED).read_bytes()
    stamp.write(folder, {**a, "by": "someone-else"}, "0" * 64)
    v = phasegate("verify", folder)
    assert v.returncode == 1 and "approval page does not name this" in v.stdout, v.stdout
    # ... and so is the right approval page spliced before other pages.
    (folder / stamp.STAMPED).write_bytes(good)
    w = PdfWriter()
    w.append(PdfReader(folder / stamp.STAMPED), pages=[0])
    w.append(PdfReader(folder / stamp.STAMPED), pages=list(range(2, len(stamped.pages))) + [1])
    with open(folder / stamp.STAMPED, "wb") as fh:
        w.write(fh)
    v = phasegate("verify", folder)
    assert v.returncode == 1 and "page 2 is not the report's page 1" in v.stdout, v.stdout
    (folder / stamp.STAMPED).write_bytes(good)
    assert phasegate("verify", folder).returncode == 0
