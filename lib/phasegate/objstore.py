"""Datasets in object storage: `--data s3://bucket/prefix`.

Under the prefix the layout is the local one (samples/date=YYYY-MM-DD/<name>.parquet). Every
dataset also has a local directory (the cache, `[storage] cache_dir`, default
~/.cache/phasegate/s3/<bucket>/<prefix>): writers journal and compact there, as on local disk,
because an object can be neither appended to nor fsynced; then each finished parquet file is
uploaded under its own name, which is unique per collector run and segment. A PUT is atomic, so
readers never see part of an object. A file is marked as stored (a hidden sibling marker) only
after its PUT returned: a writer killed mid-upload sends the same bytes under the same name again
when it next starts, so nothing is lost and nothing is counted twice.

Readers mirror the window's objects into the same local directory (objects never change once
written, so each is downloaded once) and the engine reads local files. DuckDB's own S3 reader is
an extension fetched at run time, which a machine limited to the package registries cannot fetch.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from .errors import StoreError

log = logging.getLogger(__name__)

SCHEME = "s3://"
_MARK = ".uploaded"


def is_remote(data) -> bool:
    return str(data).startswith(SCHEME)


@dataclass(frozen=True)
class Storage:
    """How to reach the object store; the credentials by the *names* of their environment variables."""

    endpoint: str | None = None  # default: $AWS_ENDPOINT_URL, else AWS itself
    region: str | None = None  # default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    cache_dir: str | None = None  # default: $PHASEGATE_CACHE, else ~/.cache/phasegate/s3

    def secret_values(self) -> list[str]:
        return [v for v in (os.environ.get(self.secret_key_env),) if v]


class Location:
    """A dataset: its local directory, and for an s3:// URL the bucket and prefix it mirrors."""

    def __init__(self, data, storage: Storage | None = None):
        self.url = str(data)
        self.storage = storage or Storage()
        if not is_remote(data):
            self.local, self.bucket, self.prefix, self._fs = Path(data), None, "", None
            return
        bucket, _, prefix = self.url[len(SCHEME):].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        if not bucket or any(c in self.url for c in "?#\\") or "//" in prefix or ".." in prefix.split("/"):
            raise StoreError(f"--data {self.url!r}: expected s3://BUCKET/PREFIX")
        cache = self.storage.cache_dir or os.environ.get("PHASEGATE_CACHE") or Path.home() / ".cache/phasegate/s3"
        self.local = Path(cache) / bucket / self.prefix
        self._fs = None

    @property
    def remote(self) -> bool:
        return self.bucket is not None

    def __str__(self) -> str:
        return self.url

    def check(self) -> None:
        """Raise StoreError now if the object store cannot even be configured (no credentials)."""
        if self.remote:
            self._filesystem()

    def _filesystem(self):
        if self._fs is None:
            self._fs = _connect(self.storage, self.url)
        return self._fs

    skipped: tuple = ()  # object keys the last pull refused (outside the mirror's samples/date=*/)

    def _key(self, rel: str) -> str:
        return "/".join(x for x in (self.bucket, self.prefix, rel) if x)

    def push(self) -> int:
        """Upload every finished local parquet file not yet stored; returns how many went up."""
        if not self.remote:
            return 0
        import pyarrow as pa

        fs, sent = self._filesystem(), 0
        for f in sorted(self.local.glob("samples/date=*/*.parquet")):
            mark = f.with_name(f".{f.name}{_MARK}")
            if mark.exists():
                continue
            try:
                data = f.read_bytes()
                with fs.open_output_stream(self._key(f.relative_to(self.local).as_posix())) as out:
                    out.write(data)
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"upload of {f.name} to {self.url} failed: {_short(exc)}") from None
            mark.touch()
            sent += 1
        return sent

    def pull(self, start: datetime | None = None, end: datetime | None = None) -> int:
        """Mirror the objects of the days [start, end) touches (all without bounds); returns how many
        were downloaded."""
        if not self.remote:
            return 0
        import pyarrow as pa
        from pyarrow.fs import FileSelector, FileType

        fs, got = self._filesystem(), 0
        try:
            infos = fs.get_file_info(FileSelector(self._key("samples"), recursive=True, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot list {self.url}: {_short(exc)}") from None
        base, skipped = self._key("") + "/", []
        for info in sorted(infos, key=lambda i: i.path):
            rel = info.path[len(base):]
            if info.type != FileType.File or not rel.endswith(".parquet") or not _in_window(rel, start, end):
                continue
            dest = _inside(self.local, rel)
            if dest is None:
                skipped.append(rel)
                continue
            if dest.exists() and dest.stat().st_size == info.size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-download")
            try:
                with fs.open_input_stream(info.path) as src, open(tmp, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
                os.replace(tmp, dest)
            except (OSError, pa.ArrowException) as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"download of {rel} from {self.url} failed: {_short(exc)}") from None
            dest.with_name(f".{dest.name}{_MARK}").touch()  # it is in the bucket: never sent back
            got += 1
        for rel in skipped:  # said, never followed: whoever can write the bucket cannot write here
            log.warning("not mirrored: the object key %r of %s leads outside samples/date=*/", rel, self.url)
        self.skipped = tuple(skipped)
        return got


def local_dir(data, storage: Storage | None = None, start: datetime | None = None,
              end: datetime | None = None) -> Path:
    """The directory to read `data` from: itself, or for s3:// its local mirror, brought up to
    date for the days [start, end) touches."""
    loc = Location(data, storage)
    if loc.remote:
        loc.local.mkdir(parents=True, exist_ok=True)
        loc.pull(start, end)
    return loc.local


@contextmanager
def writing(data, storage: Storage | None = None, start: datetime | None = None, end: datetime | None = None,
            mirror: bool = False):
    """The directory to write `data` into; for s3://, its local mirror (brought up to date for
    [start, end) first when `mirror`: a writer that reads what is stored, like pull-traffic's
    already-pulled ranges, must see it), and whatever was written is uploaded on the way out."""
    loc = Location(data, storage)
    loc.check()
    if loc.remote:
        loc.local.mkdir(parents=True, exist_ok=True)
        if mirror:
            loc.pull(start, end)
    yield loc.local
    loc.push()


def _in_window(rel: str, start, end) -> bool:
    if start is None or end is None:
        return True
    part = rel.split("/")[1] if rel.count("/") >= 2 else ""
    try:
        day = datetime.strptime(part[5:], "%Y-%m-%d").replace(tzinfo=start.tzinfo)
    except ValueError:
        return True
    return day < end and day + timedelta(days=1) > start


def _connect(storage: Storage, url: str):
    """An S3 filesystem with explicit credentials: never the SDK's default chain, which would ask
    the cloud metadata address for credentials."""
    from pyarrow import fs

    key, secret = os.environ.get(storage.access_key_env), os.environ.get(storage.secret_key_env)
    if not key or not secret:
        missing = storage.access_key_env if not key else storage.secret_key_env
        raise StoreError(f"{url}: set {missing} (the object store's credentials; the names are "
                         f"[storage] access_key_env / secret_key_env)")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = storage.endpoint or os.environ.get("AWS_ENDPOINT_URL")
    region = storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    opts = dict(access_key=key, secret_key=secret, region=region, connect_timeout=10, request_timeout=60)
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        opts.update(endpoint_override=host.rstrip("/") if host else endpoint, scheme=scheme if host else "https")
    try:
        return fs.S3FileSystem(**opts)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{url}: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _inside(root: Path, rel: str) -> Path | None:
    """The local path of an object key under the mirror: only samples/date=YYYY-MM-DD/NAME.parquet,
    with no '..', '.', empty or absolute segment, and resolving inside `root`; None for anything else."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != "samples" or not re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", parts[1]) \
            or parts[2] in ("", ".", "..") or "\\" in rel or parts[2].startswith("."):
        return None
    dest = (root / rel).resolve()
    return dest if dest.is_relative_to(root.resolve()) else None
