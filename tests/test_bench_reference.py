"""The bench's reference engine (DuckDB SQL over the same parquet files) must compute what
`analyze` computes, and agree with it: otherwise its time is not a reference. Run here on a
fleet with every order-dependent case (flapping, a failing stretch, evidence, assertion
failures); no time is asserted."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402

SCHEDULE = """
[[fault]]
kind = "server_error"
rate = 0.05
tenants = ["yacht-07", "yacht-31"]

[[fault]]
kind = "server_error"
at = "30m"
for = "10m"

[[fault]]
kind = "outage"
at = "50m"
for = "3m"

[[fault]]
kind = "count_drift"
at = "70m"
for = "5m"
"""


@pytest.mark.slow
def test_duckdb_reference_computes_the_same_aggregates_as_analyze(tmp_path):
    sched = tmp_path / "faults.toml"
    sched.write_text(SCHEDULE)
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "phasegate.cli", "simulate", "history", "--profile", str(bench.YACHTS),
                    "--hours", "2", "--end", bench.END, "--data", str(data), "--schedule", str(sched)],
                   check=True, capture_output=True, text=True)
    args = bench._args(bench.YACHTS, data, bench._minus(bench.END, 2), bench.END)
    ours = bench.child(bench.OURS.format(**args))["result"]
    duck = bench.child(bench.DUCK_CORE.format(**args) + bench.DUCK_REST.format(**args))["result"]
    # Every case is present, so agreeing is not agreeing on zeros.
    assert ours["_gaps"][2] >= 540  # ten minutes of 500s: one failing stretch
    assert ours["_gaps"][0] >= 180  # the outage: no samples for three minutes
    assert sum(ours["_transitions"].values()) > 20 and ours["_anomalies"] > 0 and ours["_evidence"] >= 3
    assert len(ours["_tenants"]) == 50
    assert bench._agree(ours, duck)
    # And a disagreement is seen: one tenant's p99, one probe's transitions, the failing stretch.
    for key, change in (("_tenants", lambda d: d["yacht-07"].__setitem__(5, d["yacht-07"][5] + 0.01)),
                        ("_transitions", lambda d: d.__setitem__("list", d["list"] + 1)),
                        ("_gaps", lambda d: d.__setitem__(2, d[2] + 1.0))):
        bad = {**duck, key: copy.deepcopy(duck[key])}
        change(bad[key])
        assert not bench._agree(ours, bad), key
