"""The operator's history of a phase: every run indexed, failed runs kept, runs compared.

After each `report`, `reports/<phase>/index.json` and `index.html` list every run of the phase
(when, window, verdict, the criteria that failed, key figures, profile hash, live or simulated,
approval state, its files, and what changed since the run before), and `reports/index.html` the
phases with their latest and approved reports. Both are rebuilt from the report folders
themselves (never appended to), written under a temporary name and renamed: a crash mid-write
leaves the previous index, and a rebuilt index is never missing a run its folder still holds.
Nothing is ever written inside a report folder: an approval signs every file in it.

A run that failed keeps its folder as `<stamp>.failed` (the executed notebook, with papermill's
error banner at the failing cell, its parameters and the error line in `failure.json`). Retention
removes only what its settings say: the oldest failed runs past `keep_failed` and the oldest
interim reports past `keep_interim`; a folder holding an approval or acknowledgement never.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .approval import APPROVAL, SIGNATURE, holds_record
from .errors import DataError
from .templating import render
from .window import iso, utcnow

INDEX_JSON, INDEX_HTML = "index.json", "index.html"
FAILED = ".failed"
KEEP_FAILED, KEEP_INTERIM = 20, 200  # defaults: about a week of hourly interim reports per phase
_FILES = ("signoff.approved.pdf", "signoff.pdf", "signoff.html", "signoff.json", "signoff.ipynb")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _approval(folder: Path) -> dict | None:
    a = _read(folder / APPROVAL)
    if not a:
        return None
    sig = a.get("signature") if isinstance(a.get("signature"), dict) else None
    return {"kind": a.get("kind"), "by": a.get("by"), "at": a.get("at"),
            "signed": bool(sig) and (folder / SIGNATURE).exists(), "key": sig.get("key") if sig else None}


def figures(doc: dict) -> dict:
    """The few figures an operator scans across runs, as the document states them."""
    o = doc.get("overall") or {}
    ex = (doc.get("probes") or {}).get("execute") or {}
    return {"samples": o.get("samples"), "error_rate": o.get("error_rate"), "http_5xx": o.get("http_5xx"),
            "execute_p99_ms": ex.get("p99_ms")}


def _entry(folder: Path) -> dict | None:
    if folder.name.endswith(".partial") or folder.name.endswith(".old"):
        return None
    if FAILED in folder.name:
        f = _read(folder / "failure.json") or {}
        return {"folder": folder.name, "status": "failed", "at": f.get("at"), "error": f.get("error"),
                "window": f.get("window"), "files": [n for n in ("signoff.ipynb", "failure.json") if (folder / n).exists()],
                "verdict": None, "record": False}
    doc = _read(folder / "signoff.json")
    if not doc or "verdict" not in doc:
        return None
    return {"_doc": doc, "folder": folder.name, "status": "ok", "at": doc.get("generated_at"), "as_of": doc.get("as_of"),
            "window": doc.get("window"), "verdict": doc["verdict"], "reason": doc.get("reason"),
            "failed": [c["id"] for c in doc.get("criteria", []) if c.get("state") == "failed"],
            "figures": figures(doc), "profile_sha256": (doc.get("provenance") or {}).get("profile_sha256"),
            "mode": doc.get("mode"), "approval": _approval(folder), "record": holds_record(folder),
            "files": [n for n in _FILES if (folder / n).exists()]}


def runs(phase_dir: Path) -> list[dict]:
    """Every run of the phase, oldest first (by when it was made, then by folder name); a run's
    document, read once, rides along as "_doc" (never written to the index)."""
    out = [e for p in sorted(Path(phase_dir).iterdir()) if p.is_dir() and (e := _entry(p))] \
        if Path(phase_dir).is_dir() else []
    return sorted(out, key=lambda e: (e["at"] or "", e["folder"]))


# -- comparing two runs ------------------------------------------------------------------------


def diff_docs(a: dict, b: dict) -> dict:
    """What changed from report `a` to report `b` of a phase: verdict, each criterion's state and
    measured value, failures new and resolved, samples."""
    ca = {c["id"]: c for c in a.get("criteria", [])}
    cb = {c["id"]: c for c in b.get("criteria", [])}
    changed = []
    for cid in [*ca, *[k for k in cb if k not in ca]]:
        x, y = ca.get(cid), cb.get(cid)
        if x is None or y is None:
            changed.append({"id": cid, "from": None if x is None else x["state"], "to": None if y is None else y["state"],
                            "measured_from": None if x is None else x.get("measured"),
                            "measured_to": None if y is None else y.get("measured")})
        elif x["state"] != y["state"] or x.get("measured") != y.get("measured"):
            changed.append({"id": cid, "from": x["state"], "to": y["state"], "measured_from": x.get("measured"),
                            "measured_to": y.get("measured")})
    fa = {k for k, c in ca.items() if c["state"] == "failed"}
    fb = {k for k, c in cb.items() if c["state"] == "failed"}
    sa, sb = (a.get("overall") or {}).get("samples"), (b.get("overall") or {}).get("samples")
    return {"from": {"generated_at": a.get("generated_at"), "verdict": a.get("verdict"), "window": a.get("window")},
            "to": {"generated_at": b.get("generated_at"), "verdict": b.get("verdict"), "window": b.get("window")},
            "verdict_changed": a.get("verdict") != b.get("verdict"), "criteria": changed,
            "new_failures": sorted(fb - fa), "resolved": sorted(fa - fb), "samples": [sa, sb]}


def diff_text(d: dict) -> str:
    v = (f"verdict {d['from']['verdict']} → {d['to']['verdict']}" if d["verdict_changed"]
         else f"verdict {d['to']['verdict']} (unchanged)")
    lines = [f"{d['from']['generated_at']} → {d['to']['generated_at']}: {v}",
             f"  samples {d['samples'][0]} → {d['samples'][1]}"]
    if d["new_failures"]:
        lines.append("  new failures: " + ", ".join(d["new_failures"]))
    if d["resolved"]:
        lines.append("  resolved: " + ", ".join(d["resolved"]))
    for c in d["criteria"]:
        state = f"{c['from']} → {c['to']}" if c["from"] != c["to"] else c["to"]
        lines.append(f"  {c['id']}: {state}; measured {c['measured_from']} → {c['measured_to']}")
    if not d["criteria"]:
        lines.append("  no criterion changed")
    return "\n".join(lines)


def diff_folders(a, b) -> dict:
    docs = []
    for f in (a, b):
        doc = _read(Path(f) / "signoff.json") if Path(f).is_dir() else _read(Path(f))
        if not doc or "verdict" not in doc:
            raise DataError(f"{f}: not a report folder (no readable signoff.json)")
        docs.append(doc)
    if docs[0].get("phase") != docs[1].get("phase"):
        raise DataError(f"{a} is a report of {docs[0].get('phase')}, {b} of {docs[1].get('phase')}: compare runs of one phase")
    return diff_docs(*docs)


# -- the index pages ---------------------------------------------------------------------------


def _spark(values: list, w: int = 160, h: int = 28) -> dict | None:
    """The points of a small line plot of the values (None: a gap), for the index's small
    multiples; the template draws it as an inline SVG."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(values) < 2 or not pts:
        return None
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span = (hi - lo) or 1.0
    xy = " ".join(f"{i * (w - 4) / (len(values) - 1) + 2:.1f},{h - 2 - (v - lo) * (h - 4) / span:.1f}" for i, v in pts)
    return {"w": w, "h": h, "points": xy}


def write_phase_index(phase_dir, removed=(), keep_replaced: int = KEEP_INTERIM, entries=None) -> list[dict]:
    """Rebuild reports/<phase>/index.json and index.html from the phase's report folders (their
    `runs`, when the caller has them). A run whose folder a later run of the same window rewrote
    (an hourly interim report) stays listed from the previous index, as "replaced", with what it
    found; `removed`: folders retention removed, whose runs leave the index."""
    phase_dir = Path(phase_dir)
    entries = [e for e in (runs(phase_dir) if entries is None else entries) if e["folder"] not in set(removed)]
    seen = {(e["folder"], e["at"]) for e in entries}
    gone = set(removed)
    before = (_read(phase_dir / INDEX_JSON) or {}).get("runs", [])
    replaced = [{**e, "status": "replaced", "files": [], "changes": None} for e in before
                if e.get("status") in ("ok", "replaced") and (e["folder"], e["at"]) not in seen
                and e["folder"] not in gone and (phase_dir / e["folder"]).is_dir()]
    entries = sorted(entries + replaced[max(0, len(replaced) - keep_replaced):], key=lambda e: (e["at"] or "", e["folder"]))
    prev_doc = None
    for e in entries:
        if e["status"] != "ok":
            continue
        doc = e.pop("_doc", None)
        if doc is None:
            continue
        if prev_doc is not None:
            d = diff_docs(prev_doc, doc)
            e["changes"] = {"since": d["from"]["generated_at"], "text": diff_text(d),
                            "new_failures": d["new_failures"], "resolved": d["resolved"],
                            "criteria": [c["id"] for c in d["criteria"]]}
        prev_doc = doc
    body = {"phase": phase_dir.name, "updated_at": iso(utcnow()), "runs": entries}
    _write_atomic(phase_dir / INDEX_JSON, json.dumps(body, indent=2, default=str) + "\n")
    ok = [e for e in entries if e["status"] in ("ok", "replaced")]
    sparks = {k: _spark([e["figures"][k] for e in ok]) for k in ("error_rate", "execute_p99_ms", "http_5xx")}
    html = render("phase_index.html.j2", phase=phase_dir.name, runs=list(reversed(entries)), sparks=sparks,
                  verdicts=[e["verdict"] for e in ok], updated=body["updated_at"])
    _write_atomic(phase_dir / INDEX_HTML, html)
    return entries


def write_root_index(root) -> Path:
    """reports/index.html: each phase with its latest run and its approved reports, and the
    rollout summaries."""
    root = Path(root)
    phases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / INDEX_JSON).exists()):
        idx = _read(d / INDEX_JSON) or {"runs": []}
        done = [e for e in idx["runs"] if e["status"] == "ok"]  # the latest whose files are there
        phases.append({"name": d.name, "latest": done[-1] if done else None, "runs": len(idx["runs"]),
                       "failed": sum(1 for e in idx["runs"] if e["status"] == "failed"),
                       "approved": [e for e in done if e.get("approval")]})
    summaries = []
    if (root / "rollout").is_dir():
        for p in sorted((root / "rollout").iterdir()):
            made = [n for n in ("rollout.pdf", "rollout.html", "rollout.json") if (p / n).exists()]
            if p.is_dir() and made:
                summaries.append({"name": p.name, "file": made[0]})
    html = render("root_index.html.j2", phases=phases, summaries=summaries, updated=iso(utcnow()))
    _write_atomic(root / INDEX_HTML, html)
    return root / INDEX_HTML


def update(phase_dir, retention: tuple[int, int] | None = None) -> list[str]:
    """After a run of the phase (successful or not): `retention` (keep_failed, keep_interim) when
    given, then both indexes, over one read of the phase's folders. Returns the folders removed."""
    phase_dir = Path(phase_dir)
    entries = runs(phase_dir)
    removed = [] if retention is None else prune(phase_dir, *retention, entries=entries)
    write_phase_index(phase_dir, removed, entries=entries)
    write_root_index(phase_dir.parent)
    return removed


# -- failed runs and retention -----------------------------------------------------------------


def keep_failed(stage: Path, folder: Path, error: str, params: dict) -> Path:
    """The staged folder of a run that failed, kept as <stamp>.failed (-2, -3, ... when taken)."""
    base = folder.with_name(folder.name + FAILED)
    dest, n = base, 1
    while dest.exists():
        n += 1
        dest = base.with_name(f"{base.name}-{n}")
    error = error.replace(str(stage), str(dest))  # "(see ...)" names the folder it is kept in
    failure = {"at": iso(utcnow()), "error": error, "parameters": params,
               "window": {"start": params.get("start"), "end": params.get("end")}}
    (stage / "failure.json").write_text(json.dumps(failure, indent=2) + "\n")
    os.replace(stage, dest)
    return dest


def prune(phase_dir, keep_failed_runs: int = KEEP_FAILED, keep_interim: int = KEEP_INTERIM, entries=None) -> list[str]:
    """Remove the oldest failed runs past `keep_failed_runs` and the oldest interim reports past
    `keep_interim` (of `entries`, the phase's runs when the caller has them); a folder holding an
    approval or acknowledgement is never removed, nor counted. Returns the folders removed."""
    entries = runs(phase_dir) if entries is None else entries
    failed = [e for e in entries if e["status"] == "failed"]
    interim = [e for e in entries if e["status"] == "ok" and not e["record"]]
    gone = failed[: max(0, len(failed) - keep_failed_runs)] + interim[: max(0, len(interim) - keep_interim)]
    removed = []
    for e in gone:
        path = Path(phase_dir) / e["folder"]
        if holds_record(path):  # checked again at the moment of removal: an approval may have just arrived
            continue
        shutil.rmtree(path)
        removed.append(e["folder"])
    return removed
