"""The sample store: the only module that touches parquet.

Layout under a data dir:
  journal/<run_id>-<seg>.jnl                 append-only, checksummed, fsynced every 0.5 s
  samples/date=YYYY-MM-DD/<run_id>-<seg>.parquet   compacted, immutable

A collector appends to its own journal segment (holding an flock on it), and every
`compact_every_s` rotates: the closed segment is rewritten as parquet under a temporary
name, fsynced, renamed, the directory fsynced, and only then the segment deleted.
Compaction is idempotent (same segment, same file name), so a crash at any step is
repaired by doing it again; `recover` does that for segments nobody holds.
Readers never see a partial parquet file, and they read journal segments not yet
compacted, so an hourly report sees samples up to the last second.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import os
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import DataError, StoreError
from .journal import FILE_MAGIC, decode_journal, encode_record

log = logging.getLogger(__name__)


SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", tz="UTC")),
    ("run_id", pa.string()),
    ("seq", pa.int64()),
    ("request_id", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("tenant", pa.string()),
    ("probe", pa.string()),
    ("method", pa.string()),
    ("url", pa.string()),
    ("status", pa.int32()),
    ("outcome", pa.string()),
    ("error_code", pa.string()),
    ("error", pa.string()),
    ("latency_ms", pa.float64()),
    ("dns_ms", pa.float32()),
    ("connect_ms", pa.float32()),
    ("tls_ms", pa.float32()),
    ("processing_ms", pa.float32()),
    ("transfer_ms", pa.float32()),
    ("bytes", pa.int64()),
    ("health_status", pa.string()),
    ("handlers_loaded", pa.int32()),
    ("handlers_total", pa.int32()),
    ("item_count", pa.int32()),
    ("deployment_id", pa.string()),
    ("flags", pa.string()),
    ("assertion_failures", pa.list_(pa.string())),
    ("evidence", pa.string()),
    ("simulated", pa.bool_()),
    ("count", pa.float64()),  # requests a row stands for (Prometheus increments); null means 1
    ("shard", pa.string()),  # "K/N" of the collector that probed it (collect --shard), else null
    ("proxy_ms", pa.float32()),  # the proxy's CONNECT, apart from the server's phases
    ("tls_version", pa.string()),  # as negotiated (https samples)
    ("cert_expiry", pa.timestamp("us", tz="UTC")),  # the server certificate's notAfter (https samples)
])
COLUMNS = tuple(SCHEMA.names)
# Latency phases are float32 (0.001 ms resolution up to ~8 s, 0.01 ms beyond): where time went,
# not the ranked latency, which stays float64. Floats byte-stream-split before zstd compress about
# a third better; the rising timestamps and sequence numbers are stored as deltas, and request ids
# (a per-process prefix and a counter) by shared prefix: live ok samples 33 -> 29 B each.
_ENCODING = {**{f.name: "BYTE_STREAM_SPLIT" for f in SCHEMA if pa.types.is_floating(f.type)},
             "ts": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED", "request_id": "DELTA_BYTE_ARRAY"}
WRITE_OPTIONS = dict(compression="zstd", column_encoding=_ENCODING,
                     use_dictionary=[f.name for f in SCHEMA if f.name not in _ENCODING])

# -- durable file operations -----------------------------------------------------------


def _step(name: str) -> None:
    """Called before each durable step of compaction; tests replace it to crash there."""


def fsync_dir(path: Path) -> None:
    _step("fsync_dir")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rows_to_table(rows: list[dict]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in COLUMNS}
    cols["ts"] = [int(round(float(t) * 1e6)) for t in cols["ts"]]
    cols["cert_expiry"] = [None if t is None else int(round(float(t) * 1e6)) for t in cols["cert_expiry"]]
    cols["assertion_failures"] = [v or [] for v in cols["assertion_failures"]]
    cols["simulated"] = [bool(v) for v in cols["simulated"]]
    return pa.table(cols, schema=SCHEMA)


def write_parquet_atomic(table: pa.Table, dest: Path) -> None:
    """Write under a temporary name, fsync, rename, fsync the directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        _step("write_temp")
        pq.write_table(table, tmp, **WRITE_OPTIONS)
        _step("fsync_temp")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _step("rename")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_samples(data_dir, rows: list[dict], name: str) -> list[Path]:
    """Compact rows into one parquet file per UTC date, named `name` (idempotent)."""
    by_date: dict[str, list[dict]] = {}
    for r in rows:
        day = datetime.fromtimestamp(float(r["ts"]), timezone.utc).strftime("%Y-%m-%d")
        by_date.setdefault(day, []).append(r)
    out = []
    for day, group in sorted(by_date.items()):
        dest = Path(data_dir) / "samples" / f"date={day}" / f"{name}.parquet"
        write_parquet_atomic(rows_to_table(group), dest)
        out.append(dest)
    return out


def write_tables(data_dir, tables, name: str) -> int:
    """Stream Arrow tables into one parquet file per UTC date (any order of dates), each written
    under a temporary name and renamed once every table is in; returns rows written."""
    root = Path(data_dir)
    open_files: dict[str, tuple] = {}  # day -> (writer, tmp, dest)
    total = 0
    try:
        for table in tables:
            days = pa.compute.strftime(table["ts"], format="%Y-%m-%d").to_pylist()
            for day in dict.fromkeys(days):
                part = table.filter(pa.array([d == day for d in days])) if len(set(days)) > 1 else table
                if day not in open_files:
                    dest = root / "samples" / f"date={day}" / f"{name}.parquet"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
                    open_files[day] = (pq.ParquetWriter(tmp, SCHEMA, **WRITE_OPTIONS), tmp, dest)
                open_files[day][0].write_table(part)
                total += part.num_rows
        for writer, tmp, dest in open_files.values():
            writer.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
    except BaseException:
        for writer, tmp, _dest in open_files.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - cleaning up after the real error
                pass
            tmp.unlink(missing_ok=True)
        raise
    return total


def compact_segment(data_dir, seg: Path) -> tuple[int, int]:
    """Rewrite one closed journal segment as parquet, then delete it: (rows, bytes dropped)."""
    data = seg.read_bytes()
    rows, dropped = decode_journal(data)
    if rows:
        write_samples(data_dir, rows, seg.stem)
    _step("delete_journal")
    seg.unlink(missing_ok=True)
    fsync_dir(seg.parent)
    return len(rows), dropped


def recover(data_dir) -> list[str]:
    """Compact journal segments left by dead collectors; remove their temp files."""
    root = Path(data_dir)
    notes = []
    for seg in sorted((root / "journal").glob("*.jnl")):
        owner = _owner_pid(seg.stem)
        if owner is not None and owner != os.getpid() and _alive(owner):
            continue  # a live collector's segment, perhaps created an instant before its flock
        try:
            fd = os.open(seg, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live collector holds it
        try:
            n, dropped = compact_segment(root, seg)
            notes.append(f"recovered {n} samples from {seg.name}"
                         + (f", dropped {dropped} unreadable bytes" if dropped else ""))
        except (OSError, pa.ArrowException) as exc:
            notes.append(f"could not recover {seg.name}: {exc}")
        finally:
            os.close(fd)
    for tmp in root.glob("samples/date=*/.*.tmp-*"):
        pid = tmp.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            notes.append(f"removed leftover temporary file {tmp.name}")
    for note in notes:
        log.warning(note)
    return notes


def _owner_pid(stem: str) -> int | None:
    """The collector pid in a segment name `<YYYYmmddTHHMMSSZ>-<pid>-<hex>-<seg>`, if it has one."""
    parts = stem.split("-")
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SampleWriter:
    """A collector's append path: journal now, parquet every `compact_every_s`.

    A failed write (disk full, I/O error) never stops probing: the record waits in a
    bounded queue and is retried; when the queue is full the oldest record is dropped
    and counted in `dropped`, and every failure is logged as an error.
    """

    def __init__(self, data_dir, run_id: str, compact_every_s: float = 60.0, fsync_every_s: float = 0.5,
                 max_pending: int = 50_000, upload=None):
        self.root = Path(data_dir)
        self.upload = upload  # sends finished parquet files to object storage (objstore.Location.push)
        self.run_id = run_id
        self.compact_every_s = compact_every_s
        self.fsync_every_s = fsync_every_s
        self.max_pending = max_pending
        self.seq = 0
        self.seg_no = 0
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._pending: deque[bytes] = deque()
        self._closed_segments: list[tuple[int, Path]] = []
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        try:
            (self.root / "journal").mkdir(parents=True, exist_ok=True)
            (self.root / "samples").mkdir(parents=True, exist_ok=True)
            self.recovered = recover(self.root)
            self._open_segment()
        except OSError as exc:
            raise StoreError(f"cannot open data dir {self.root}: {exc.strerror or exc}") from None
        self._upload()  # files a killed run compacted but had not sent yet
        self._last_compact = time.monotonic()
        self._thread = threading.Thread(target=self._background, name="store-flush", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _open_segment(self):
        self.seg_no += 1
        path = self.root / "journal" / f"{self.run_id}-{self.seg_no:06d}.jnl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, FILE_MAGIC)
            fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.fd, self.seg_path = fd, path

    def _fail(self, exc: OSError, what: str) -> None:
        self.write_errors += 1
        msg = f"{what}: {exc.strerror or exc}"
        if msg != self.last_error:
            log.error("store: %s — %d samples waiting in memory, %d dropped so far", msg, len(self._pending), self.dropped)
        self.last_error = msg

    def _drain(self) -> None:
        """Write queued records in order; stop at the first failure (caller holds the lock)."""
        while self._pending:
            try:
                _write_all(self.fd, self._pending[0])
            except OSError as exc:
                self._fail(exc, "journal write failed")
                while len(self._pending) > self.max_pending:
                    self._pending.popleft()
                    self.dropped += 1
                return
            self._pending.popleft()
            self.written += 1
            self._dirty = True
        self.last_error = None

    def append(self, row: dict) -> None:
        with self._lock:
            self.seq += 1
            row["run_id"], row["seq"] = self.run_id, self.seq
            self._pending.append(encode_record(row))
            self._drain()

    def flush(self) -> None:
        with self._lock:
            self._drain()
            if self._dirty:
                try:
                    os.fsync(self.fd)
                    self._dirty = False
                except OSError as exc:
                    self._fail(exc, "journal fsync failed")

    def _rotate(self) -> None:
        """Start a new segment; the old one joins the segments waiting for compaction."""
        old = (self.fd, self.seg_path)
        os.fsync(self.fd)
        self._open_segment()  # if this fails the old segment simply stays current
        self._closed_segments.append(old)
        self._dirty = False

    def _compact_closed(self) -> None:
        for fd, path in list(self._closed_segments):
            try:
                compact_segment(self.root, path)
            except (OSError, pa.ArrowException) as exc:
                self._fail(exc if isinstance(exc, OSError) else OSError(str(exc)), f"compaction of {path.name} failed")
                continue  # the segment stays on disk and is retried next time
            os.close(fd)
            with self._lock:
                self._closed_segments.remove((fd, path))
        self._upload()

    def _upload(self) -> None:
        """Send compacted files to object storage; a failure is logged and retried at the next
        compaction (the files stay on local disk, unmarked, until a PUT succeeds)."""
        if self.upload is None:
            return
        try:
            self.upload()
        except StoreError as exc:
            self._fail(OSError(str(exc)), "upload failed")

    def compact(self) -> None:
        with self._lock:
            self._drain()
            try:
                self._rotate()
            except OSError as exc:
                self._fail(exc, "journal rotation failed")
        self._compact_closed()
        self._last_compact = time.monotonic()

    def _background(self):
        while not self._stop.wait(self.fsync_every_s):
            self.flush()
            if time.monotonic() - self._last_compact >= self.compact_every_s:
                self.compact()

    def close(self, wait_s: float = 0.0) -> None:
        """Flush and compact everything; with `wait_s`, keep retrying a failing disk that long."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + wait_s
        self.flush()
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.2)
            self.flush()
        with self._lock:
            if self._pending:
                log.error("store: %d samples could not be written and are lost", len(self._pending))
            self.dropped += len(self._pending)
            self._pending.clear()
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self._fail(exc, "journal fsync failed")
            self._closed_segments.append((self.fd, self.seg_path))
        self._compact_closed()
        for fd, path in self._closed_segments:
            log.error("store: %s stays in the journal; the next start recovers it", path.name)
            os.close(fd)
        self._closed_segments.clear()


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n != len(data):  # a short write leaves a torn record that recovery skips; retry it whole
        raise OSError(28, f"short write ({n} of {len(data)} bytes)")


# -- reading ---------------------------------------------------------------------------


def _file_days(path: str):
    part = Path(path).parent.name
    try:
        return datetime.strptime(part[5:], "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def list_files(data_dir, start: datetime | None = None, end: datetime | None = None) -> list[str]:
    files = sorted(glob.glob(os.path.join(data_dir, "samples", "date=*", "*.parquet")))
    if start is None or end is None:
        return files
    keep = []
    for f in files:
        day = _file_days(f)
        if day is None or (day < end and day + timedelta(days=1) > start):
            keep.append(f)
    return keep


def _schema_problem(schema: pa.Schema) -> str | None:
    """Why a file's columns cannot be read as samples (a column of the wrong type), or None.
    Columns it lacks are fine (older files): the reader fills them with nulls."""
    for field in schema:
        if field.name not in COLUMNS:
            continue
        want, got = SCHEMA.field(field.name).type, field.type
        if pa.types.is_dictionary(got):
            got = got.value_type
        if got == want or (pa.types.is_large_string(got) and want == pa.string()):
            continue
        return f"column {field.name} is {got}, not {want}"
    return None


def _readable(files, deep: bool = False) -> tuple[list[str], list[dict]]:
    """(files whose footer reads and whose columns have the samples' types, [excluded file and
    why]); `deep` reads every page too, for the rare file that is bad past its footer (found when
    an engine's scan fails). A file of another schema is excluded and listed like a corrupt one."""
    good, excluded = [], []
    for f in files:
        try:
            schema = pq.read_table(f).schema if deep else pq.read_schema(f)
        except (pa.ArrowException, OSError) as exc:
            excluded.append({"file": f, "reason": f"unreadable parquet: {_short(exc)}"})
            continue
        problem = _schema_problem(schema)
        if problem:
            excluded.append({"file": f, "reason": f"not a samples file: {problem}"})
        else:
            good.append(f)
    return good, excluded


def _journal_tables(root: Path, cols=None, flt=None):
    """The journal rows not yet compacted, as Arrow tables (all columns), with the segments read
    ({path, sha256} of the bytes read: a segment may be compacted and deleted a moment later)
    and [excluded segment and why]."""
    tables, segs, excluded = [], [], []
    compacted = {Path(f).stem for f in list_files(root)}
    for seg in sorted((root / "journal").glob("*.jnl")):
        if seg.stem in compacted:
            continue  # compacted but not yet deleted: the parquet copy counts
        try:
            raw = seg.read_bytes()
        except FileNotFoundError:
            continue  # compacted meanwhile; a rare race costs these rows in this read only
        rows, dropped = decode_journal(raw)
        if rows:
            t = rows_to_table(rows)
            if cols is not None:
                t = t.select(cols)
            tables.append(t if flt is None else ds.dataset(t).to_table(filter=flt))
            segs.append({"path": str(seg), "sha256": hashlib.sha256(raw).hexdigest()})
        if dropped:
            excluded.append({"file": str(seg), "reason": f"{dropped} unreadable journal bytes skipped"})
    return tables, segs, excluded


def open_window(con, data_dir, start: datetime, end: datetime, name: str = "samples", deep: bool = False) -> dict:
    """Make `name` a DuckDB view of the samples with start <= ts < end: the window's parquet files
    (read by DuckDB itself, columns and time bounds pushed down into the scan) and the journal rows
    not yet compacted. Returns {"files": [{path, sha256}] read, "excluded": [{file, reason}]}, never
    silently."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data dir does not exist: {data_dir}")
    good, excluded = _readable(list_files(root, start, end), deep)
    tables, segs, jexcluded = _journal_tables(root)
    if hasattr(con, "parquet_view"):  # another engine (Spark) reads the same files its own way
        con.parquet_view(name, good, pa.concat_tables(tables) if tables else None, SCHEMA, start, end)
    else:
        _duckdb_view(con, name, good, tables, start, end)
    excluded += jexcluded
    for item in excluded:
        log.warning("excluded %s: %s", item["file"], item["reason"])
    return {"files": [{"path": str(f), "sha256": sha256(f)} for f in good] + segs, "excluded": excluded}


def _duckdb_view(con, name, good, tables, start, end) -> None:
    # Every column of the schema exists in the view, even when no file has it (older files).
    con.register(f"{name}_schema", SCHEMA.empty_table())
    parts = [f"SELECT * FROM {name}_schema"]
    if good:
        files = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in good) + "]"
        parts.append(f"SELECT * FROM read_parquet({files}, union_by_name = true)")
        # Files that alone have every column, typed as the schema types it, are read without the
        # union (it cost ~6 % of a 10 M-sample window's read).
        if not tables and _typed_as(con, parts[0], parts[1]):
            parts = parts[1:]
    if tables:
        con.register(f"{name}_journal", pa.concat_tables(tables))
        parts.append(f"SELECT * FROM {name}_journal")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM ({' UNION ALL BY NAME '.join(parts)})
        WHERE ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{end.isoformat()}'""")


def _typed_as(con, schema: str, scan: str) -> bool:
    """Whether `scan` has every column of `schema`, each of the same type."""
    want = {r[0]: r[1] for r in con.execute(f"DESCRIBE {schema}").fetchall()}
    have = {r[0]: r[1] for r in con.execute(f"DESCRIBE {scan}").fetchall()}
    return all(have.get(k) == t for k, t in want.items())


def read_samples(data_dir, start: datetime, end: datetime, probes=None, columns=None,
                 include_journal: bool = True, outcomes=None, nonnull: str | None = None,
                 categorical: bool = False, sources=None):
    """Samples with start <= ts < end as a DataFrame (ts tz-aware UTC); `probes`, `outcomes` and
    `nonnull` (a column that must be set) narrow the rows inside the parquet scan.

    `df.attrs["input_files"]` lists the files read, `df.attrs["excluded"]` the ones
    skipped with the reason (corrupt, unreadable) — never silently.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data dir does not exist: {data_dir}")
    cols = list(COLUMNS) if columns is None else list(dict.fromkeys(["ts", *columns]))
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise DataError(f"unknown sample column: {unknown[0]}")
    start_us, end_us = pa.scalar(start, SCHEMA.field("ts").type), pa.scalar(end, SCHEMA.field("ts").type)
    flt = (ds.field("ts") >= start_us) & (ds.field("ts") < end_us)
    if probes:
        flt = flt & ds.field("probe").isin(list(probes))
    if outcomes:
        flt = flt & ds.field("outcome").isin(list(outcomes))
    if sources:
        flt = flt & ds.field("source").isin(list(sources))
    if nonnull:
        flt = flt & ds.field(nonnull).is_valid()
    schema, fmt = SCHEMA, ds.ParquetFileFormat()
    if categorical:
        # Parquet stores repeated strings dictionary-encoded: read them as dictionaries, and
        # pandas gets categoricals without hashing every string (10 M samples: 9 s -> 1 s).
        # (Strings stored by shared prefix, not by dictionary, stay strings: Arrow cannot decode them as one.)
        strs = [f.name for f in SCHEMA if f.type == pa.string() and f.name in cols and f.name not in _ENCODING]
        schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in strs else f
                            for f in SCHEMA])
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=strs))
    good, excluded = _readable(list_files(root, start, end))
    # Only the time bounds: prune row groups by their statistics and cut just the batches that
    # straddle a bound (a row filter over every row costs more than the read itself).
    only_time = not (probes or outcomes or sources or nonnull)
    tables = []
    try:
        if good:
            tables.append(_scan(good, schema, fmt, cols, flt, only_time, start_us, end_us))
    except (pa.ArrowException, OSError):
        tables = []  # one file is bad past its footer: find it, keep the rest
        for f in list(good):
            try:
                tables.append(_scan([f], schema, fmt, cols, flt, only_time, start_us, end_us))
            except (pa.ArrowException, OSError) as exc:
                good.remove(f)
                excluded.append({"file": f, "reason": f"unreadable parquet: {_short(exc)}"})
    inputs = list(good)
    if include_journal:
        jt, segs, jexcluded = _journal_tables(root, cols, flt)
        tables += [t.cast(pa.schema([schema.field(c) for c in cols])) for t in jt]
        inputs += [seg["path"] for seg in segs]
        excluded += jexcluded
    df = _to_pandas(tables, schema.empty_table().select(cols), categorical)
    df.attrs["input_files"] = inputs
    df.attrs["excluded"] = excluded
    for item in excluded:
        log.warning("excluded %s: %s", item["file"], item["reason"])
    return df


def _to_pandas(tables: list, empty: pa.Table, categorical: bool) -> pd.DataFrame:
    """The tables (emptied: nothing else may hold them) as one frame, column by column, each Arrow
    column freed once converted: the peak holds one column twice, not the whole table."""
    table = pa.concat_tables(tables) if tables else empty
    tables.clear()
    out = {}
    for name in list(table.column_names):
        col = table.column(name)
        table = table.drop_columns([name])
        # Categoricals keep repeated strings (probe, outcome, tenant...) small and fast to group.
        s = col.to_pandas(types_mapper={pa.int32(): _int_dtype()}.get, strings_to_categorical=categorical)
        del col
        if isinstance(s.dtype, pd.CategoricalDtype):
            # Sorted categories: the same data gives the same order whatever the file order.
            s = s.cat.reorder_categories(sorted(s.cat.categories))
        out[name] = s
    return pd.DataFrame(out, copy=False)


def _int_dtype():
    # Int32 like the parquet column: converting to Int64 costs a cast of every row (10 M: 1.4 s -> 0.3 s).
    return pd.Int32Dtype()


def _scan(files, schema, fmt, cols, flt, only_time: bool, start_us, end_us) -> pa.Table:
    """The rows of `files` that `flt` keeps; with `only_time`, [start_us, end_us) cut as cheaply as the data allows."""
    d = ds.dataset(files, schema=schema, format=fmt)
    if not only_time:
        return d.to_table(columns=cols, filter=flt)
    groups = [rg for frag in d.get_fragments(filter=flt) for rg in frag.split_by_row_group(flt)]
    table = ds.FileSystemDataset(groups, schema, fmt, d.filesystem).to_table(columns=cols)
    batches = []
    for b in table.to_batches():
        lo, hi = (x.value for x in pa.compute.min_max(b.column("ts")).values())
        if lo is None or hi < start_us.value or lo >= end_us.value:
            continue
        if lo < start_us.value or hi >= end_us.value:
            ts = b.column("ts")
            b = b.filter(pa.compute.and_(pa.compute.greater_equal(ts, start_us), pa.compute.less(ts, end_us)))
        batches.append(b)
    return pa.Table.from_batches(batches, table.schema)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
