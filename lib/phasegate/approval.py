"""A person's approval of a sign-off report: who, when, and the SHA-256 of every file it covers.

`approve` writes `approval.json` into the report folder, and with an SSH key signs it with
OpenSSH's file signing (`ssh-keygen -Y sign`, namespace `phasegate`: the scheme git uses for
signed commits) into `approval.json.sig`. `verify` recomputes every hash and checks the
signature, so a report changed after its approval, by one byte, is caught and named.

Only a GO can be approved; anything else may be *acknowledged* (`acknowledge=True`): recorded
the same way, but an acknowledgement never completes a phase.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, ReportError
from .window import iso, utcnow

APPROVAL = "approval.json"
SIGNATURE = APPROVAL + ".sig"
NAMESPACE = "phasegate"
_SSH_TIMEOUT_S = 30


def _covered(folder: Path) -> dict:
    """Every file of the report folder but the approval's own, by relative path."""
    from .store import sha256

    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (APPROVAL, SIGNATURE) and not p.name.endswith(".tmp")}


def _report(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"report folder does not exist: {folder}")
    doc_path = folder / "signoff.json"
    try:
        return json.loads(doc_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder} holds no signoff.json: not a sign-off report folder") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{doc_path}: unreadable ({exc})") from None


def _ssh_keygen(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise ReportError("ssh-keygen is not installed (Debian: apt-get install openssh-client)")
    try:
        return subprocess.run([exe, *map(str, args)], input=stdin, capture_output=True, timeout=_SSH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ReportError(f"ssh-keygen did not answer within {_SSH_TIMEOUT_S} s (a key with a passphrase "
                          "needs an ssh-agent holding it)") from None


def approve(folder, by: str, comment: str = "", key=None, acknowledge: bool = False, now=None) -> dict:
    """Write REPORT/approval.json (and its signature with `key`); returns the approval."""
    folder = Path(folder)
    doc = _report(folder)
    by = (by or "").strip()
    if not by or any(not c.isprintable() for c in by):
        raise DataError("--by must name the approver (printable text)")
    verdict = doc.get("verdict")
    if verdict != "GO" and not acknowledge:
        raise DataError(f"the report's verdict is {verdict}, not GO: only a GO can be approved "
                        "(--acknowledge records that you have read it, which never completes a phase)")
    if (folder / APPROVAL).exists():
        raise DataError(f"{folder / APPROVAL} exists: this report has been approved already")
    if key is not None and not Path(key).is_file():
        raise DataError(f"--key: no such key file: {key}")
    approval = {
        "kind": "acknowledgement" if verdict != "GO" else "approval",
        "by": by, "at": iso(now or utcnow()), "comment": comment or "",
        "report": {"phase": doc.get("phase"), "verdict": verdict, "window": doc.get("window", {}),
                   "mode": doc.get("mode"), "profile_sha256": doc.get("provenance", {}).get("profile_sha256")},
        "files": _covered(folder),
        "signature": None,
    }
    if key is not None:
        fp = _ssh_keygen("-l", "-f", key)
        if fp.returncode != 0:
            raise DataError(f"--key: not an SSH key: {fp.stderr.decode(errors='replace').strip()}")
        approval["signature"] = {"namespace": NAMESPACE, "file": SIGNATURE,
                                 "key": fp.stdout.decode().split()[1], "principal": by}
    body = json.dumps(approval, indent=2) + "\n"
    with tempfile.TemporaryDirectory(prefix="phasegate-approve-") as tmp:
        staged = Path(tmp) / APPROVAL
        staged.write_text(body)
        if key is not None:
            res = _ssh_keygen("-Y", "sign", "-f", key, "-n", NAMESPACE, staged)
            if res.returncode != 0:
                raise ReportError(f"ssh-keygen could not sign: {res.stderr.decode(errors='replace').strip()}")
            os.replace(Path(tmp) / SIGNATURE, folder / SIGNATURE)
        os.replace(staged, folder / APPROVAL)  # last: an approval file always has its signature beside it
    return approval


@dataclass
class Verification:
    ok: bool
    approval: dict | None
    problem: str = ""       # the first thing that does not hold, in words
    signed: bool = False     # a signature exists and is valid
    signer_checked: bool = False  # ... and its key is the approver's in the allowed-signers file

    @property
    def line(self) -> str:
        a = self.approval or {}
        if not self.ok:
            return f"NOT VALID: {self.problem}"
        how = ("signed, key checked against the allowed signers" if self.signer_checked else
               "signed (key not checked: no allowed-signers file given)" if self.signed else "unsigned")
        return f"{a['kind']} by {a['by']} at {a['at']} ({how}); {len(a['files'])} files unchanged"


def verify(folder, allowed_signers=None) -> Verification:
    """Every hash and the signature of REPORT/approval.json. Raises DataError when there is no
    approval to check (bad input); a changed file or a bad signature is a failed Verification."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"report folder does not exist: {folder}")
    path = folder / APPROVAL
    try:
        raw = path.read_bytes()
        approval = json.loads(raw)
        files = approval["files"]
        approval["by"], approval["at"], approval["kind"]  # noqa: B018 - the keys a reader relies on
    except FileNotFoundError:
        raise DataError(f"{folder} has no {APPROVAL}: the report has not been approved") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Verification(False, None, f"{APPROVAL} is unreadable or incomplete ({exc})")
    if allowed_signers is not None and not Path(allowed_signers).is_file():
        raise DataError(f"--allowed-signers: no such file: {allowed_signers}")
    now = _covered(folder)
    for name, digest in files.items():
        if name not in now:
            return Verification(False, approval, f"{name} was removed after the approval")
        if now[name] != digest:
            return Verification(False, approval, f"{name} changed after the approval (SHA-256 differs)")
    extra = sorted(set(now) - set(files))
    if extra:
        return Verification(False, approval, f"{extra[0]} was added after the approval")
    sig = approval.get("signature")
    if not sig:
        if (folder / SIGNATURE).exists():
            return Verification(False, approval, f"{SIGNATURE} exists but {APPROVAL} says it is unsigned")
        return Verification(True, approval)
    if not (folder / SIGNATURE).is_file():
        return Verification(False, approval, f"{SIGNATURE} is missing")
    if allowed_signers is not None:
        res = _ssh_keygen("-Y", "verify", "-f", allowed_signers, "-I", sig.get("principal", approval["by"]),
                          "-n", NAMESPACE, "-s", folder / SIGNATURE, stdin=raw)
    else:
        res = _ssh_keygen("-Y", "check-novalidate", "-n", NAMESPACE, "-s", folder / SIGNATURE, stdin=raw)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()
        return Verification(False, approval, f"bad signature on {APPROVAL}: {why[-1] if why else 'ssh-keygen refused it'}")
    if sig.get("key") and sig["key"] not in res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace"):
        return Verification(False, approval, f"{SIGNATURE} was made with another key than the one {APPROVAL} names")
    return Verification(True, approval, signed=True, signer_checked=allowed_signers is not None)
