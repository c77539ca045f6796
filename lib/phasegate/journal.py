"""The journal's record format: `magic | length | crc32 | JSON`, and its tolerant reader.

A torn write, a flipped bit or a run of garbage costs only the bytes it covers: the reader
resynchronises on the next whole, checksummed record and says how many bytes it dropped.
"""

from __future__ import annotations

import json
import struct
import zlib

FILE_MAGIC = b"PGJ1\n"
_REC_MAGIC = b"\xa7R"
_REC_HEAD = struct.Struct("<2sII")  # magic, payload length, crc32
MAX_RECORD = 16 * 1024 * 1024


def encode_record(row: dict) -> bytes:
    payload = json.dumps(row, separators=(",", ":"), default=str).encode()
    return _REC_HEAD.pack(_REC_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_journal(data: bytes) -> tuple[list[dict], int]:
    """Valid records and the number of bytes dropped (torn, garbled or zeroed)."""
    rows, dropped, pos = [], 0, 0
    if data.startswith(FILE_MAGIC):
        pos = len(FILE_MAGIC)
    else:
        dropped_head = min(len(data), len(FILE_MAGIC))
        pos, dropped = dropped_head, dropped_head
    n = len(data)
    while pos < n:
        rec = _record_at(data, pos)
        if rec is not None:
            row, size = rec
            rows.append(row)
            pos += size
            continue
        # Resynchronise: the next offset where a whole valid record starts.
        nxt = data.find(_REC_MAGIC, pos + 1)
        while nxt != -1 and _record_at(data, nxt) is None:
            nxt = data.find(_REC_MAGIC, nxt + 1)
        end = n if nxt == -1 else nxt
        dropped += end - pos
        pos = end
    return rows, dropped


def _record_at(data: bytes, pos: int):
    if pos + _REC_HEAD.size > len(data):
        return None
    magic, length, crc = _REC_HEAD.unpack_from(data, pos)
    start = pos + _REC_HEAD.size
    if magic != _REC_MAGIC or length > MAX_RECORD or start + length > len(data):
        return None
    payload = data[start:start + length]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return json.loads(payload), _REC_HEAD.size + length
    except ValueError:
        return None
