"""The store: exact round trips, window pushdown, torn journals, corrupt and old files."""

import math
import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phasegate.errors import DataError
from phasegate.store import (SampleWriter, decode_journal, encode_record, read_samples, recover,
                             write_samples)

T0 = datetime(2026, 1, 28, 14, 45, 1, tzinfo=timezone.utc)


def _rows(n, seed=7, start=T0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ok = rng.random() > 0.1
        out.append({
            "ts": start.timestamp() + i * 37.123456,
            "run_id": "r", "seq": i + 1, "source": "probe", "target": "t", "tenant": None,
            "probe": rng.choice(["health", "list", "execute"]), "method": "GET", "url": "http://x/y",
            "status": 200 if ok else rng.choice([500, 503, None]),
            "outcome": "ok" if ok else "http_error", "error_code": None if ok else "E",
            "latency_ms": round(rng.lognormvariate(3, 1), 6), "bytes": rng.randint(0, 10_000),
            "handlers_loaded": 4, "handlers_total": 4, "item_count": rng.randint(0, 20),
            "deployment_id": f"dep-{i % 3}", "assertion_failures": ["a != 1"] if i % 17 == 0 else [],
            "simulated": False,
        })
    return out


def test_round_trip_2500_samples_exact(tmp_path):
    rows = _rows(2500)
    write_samples(tmp_path, rows[:1200], "part-a")
    w = SampleWriter(tmp_path, "run-b", compact_every_s=3600)
    for r in rows[1200:]:
        w.append(dict(r))
    w.close()
    df = read_samples(tmp_path, T0 - timedelta(days=1), T0 + timedelta(days=30))
    assert len(df) == 2500
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    df = df.sort_values("ts").reset_index(drop=True)
    for i, r in enumerate(rows):
        got = df.iloc[i]
        assert got["ts"].timestamp() == pytest.approx(r["ts"], abs=1e-6)
        assert got["probe"] == r["probe"]
        assert (None if got["status"] is pd_na() else int(got["status"])) == r["status"]
        assert got["latency_ms"] == r["latency_ms"]
        assert int(got["bytes"]) == r["bytes"] and int(got["item_count"]) == r["item_count"]
        assert list(got["assertion_failures"]) == r["assertion_failures"]
    assert len(df.attrs["input_files"]) >= 2
    assert df.attrs["excluded"] == []


def pd_na():
    import pandas as pd
    return pd.NA


def test_window_is_pushed_down_half_open(tmp_path):
    rows = _rows(500)
    write_samples(tmp_path, rows, "w")
    start = datetime.fromtimestamp(rows[100]["ts"], timezone.utc)
    end = datetime.fromtimestamp(rows[200]["ts"], timezone.utc)
    df = read_samples(tmp_path, start, end, probes=["health"], columns=["probe", "status"])
    expected = [r for r in rows[100:200] if r["probe"] == "health"]
    assert len(df) == len(expected)
    assert list(df.columns) == ["ts", "probe", "status"]


@pytest.mark.parametrize("shuffled", [False, True])
def test_time_window_cuts_inside_row_groups_exactly(tmp_path, shuffled):
    # Small row groups and a window whose bounds fall inside some of them: the reader prunes row
    # groups by statistics and cuts only straddling batches; it must keep exactly the rows inside.
    from phasegate.store import rows_to_table
    rows = _rows(2000, seed=11, start=datetime(2026, 1, 28, tzinfo=timezone.utc))  # 20.6 h: one day folder
    if shuffled:
        random.Random(3).shuffle(rows)
    (tmp_path / "samples" / "date=2026-01-28").mkdir(parents=True)
    pq.write_table(rows_to_table(rows), tmp_path / "samples" / "date=2026-01-28" / "rg.parquet", row_group_size=64)
    us = {r["seq"]: int(round(r["ts"] * 1e6)) for r in rows}  # as stored
    all_us = sorted(us.values())
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for a, b in [(0, 2000), (100, 101), (130, 1700), (640, 704), (1999, 2000), (5, 5)]:
        lo, hi = all_us[a], all_us[b] if b < 2000 else all_us[-1] + 1
        start, end = epoch + timedelta(microseconds=lo), epoch + timedelta(microseconds=hi)
        df = read_samples(tmp_path, start, end, columns=["probe", "status"], categorical=True)
        want = sorted(seq for seq, t in us.items() if lo <= t < hi)
        assert len(want) == b - a
        got = read_samples(tmp_path, start, end, columns=["seq"])
        assert sorted(got["seq"].tolist()) == want
        assert len(df) == len(want) and (df["ts"] >= start).all() and (df["ts"] < end).all()


def test_truncated_parquet_is_skipped_and_reported(tmp_path):
    rows = _rows(300)
    files = write_samples(tmp_path, rows[:150], "good") + write_samples(tmp_path, rows[150:], "bad")
    bad = [f for f in files if f.name == "bad.parquet"][0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    assert len(files) == 2  # all 300 rows fall on one date: one file each
    for categorical in (False, True):  # every column, strings as dictionaries or not
        df = read_samples(tmp_path, T0 - timedelta(days=1), T0 + timedelta(days=30), categorical=categorical)
        assert len(df) == 150
        assert [e["file"] for e in df.attrs["excluded"]] == [str(bad)]
        assert "unreadable parquet" in df.attrs["excluded"][0]["reason"]


def test_older_file_without_newer_columns(tmp_path):
    old = pa.table({"ts": pa.array([int(T0.timestamp() * 1e6)], pa.timestamp("us", tz="UTC")),
                    "probe": ["health"], "status": pa.array([200], pa.int32()), "outcome": ["ok"]})
    (tmp_path / "samples" / "date=2026-01-28").mkdir(parents=True)
    pq.write_table(old, tmp_path / "samples" / "date=2026-01-28" / "old.parquet")
    for categorical in (False, True):
        df = read_samples(tmp_path, T0 - timedelta(hours=1), T0 + timedelta(hours=1), categorical=categorical)
        assert len(df) == 1 and df["probe"][0] == "health"
        assert df["latency_ms"].isna().all() and df["deployment_id"].isna().all()


def test_missing_data_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data dir does not exist"):
        read_samples(tmp_path / "nope", T0, T0 + timedelta(hours=1))


def test_torn_journal_recovers_whole_records(tmp_path):
    rows = _rows(10)
    blob = b"PGJ1\n" + b"".join(encode_record(r) for r in rows)
    got, dropped = decode_journal(blob[:-5])
    assert len(got) == 9 and dropped > 0
    garbled = bytearray(blob)
    third = len(b"PGJ1\n") + sum(len(encode_record(r)) for r in rows[:2]) + 12
    garbled[third] ^= 0xFF  # a bit flip inside record 3's payload: crc catches it
    got, dropped = decode_journal(bytes(garbled))
    assert [r["seq"] for r in got] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert dropped == len(encode_record(rows[2]))


def test_recover_compacts_a_dead_writers_journal(tmp_path):
    (tmp_path / "journal").mkdir()
    seg = tmp_path / "journal" / "dead-000001.jnl"
    seg.write_bytes(b"PGJ1\n" + b"".join(encode_record(r) for r in _rows(40)) + b"\xa7R\x00garbage")
    notes = recover(tmp_path)
    assert notes == ["recovered 40 samples from dead-000001.jnl, dropped 10 unreadable bytes"]
    assert not seg.exists()
    df = read_samples(tmp_path, T0 - timedelta(days=1), T0 + timedelta(days=30))
    assert len(df) == 40 and df["seq"].is_unique


def test_unflushed_journal_rows_are_visible_to_readers(tmp_path):
    w = SampleWriter(tmp_path, "live", compact_every_s=3600)
    for r in _rows(25):
        w.append(r)
    df = read_samples(tmp_path, T0 - timedelta(days=1), T0 + timedelta(days=30))
    assert len(df) == 25
    w.close()
    assert len(read_samples(tmp_path, T0 - timedelta(days=1), T0 + timedelta(days=30))) == 25
    assert not list((tmp_path / "journal").glob("*.jnl"))
    assert not math.isnan(df["latency_ms"].sum())
