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
HISTORY = "approvals"  # approvals replaced by a newer one (--replace), each in its own folder
NAMESPACE = "phasegate"
_SSH_TIMEOUT_S = 30


def holds_record(folder: Path) -> bool:
    """A report folder holding a person's approval or acknowledgement: never replaced or deleted."""
    return (folder / APPROVAL).exists() or (folder / HISTORY).exists()


def _covered(folder: Path) -> dict:
    """Every file of the report folder but the approval's own and its history, by relative path."""
    from .store import sha256

    from .stamp import STAMPED

    own = {APPROVAL, SIGNATURE, STAMPED}  # the stamped PDF is made from the approval: verify checks it apart
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not (p.parent == folder and p.name in own)
            and p.relative_to(folder).parts[0] != HISTORY}


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


def _plan_of(doc: dict, plan):
    """The rollout plan whose rules an approval of this report must follow: the one given, else
    the one the report was made with (None for a report made without a plan)."""
    from .plan import Plan, load_plan

    if isinstance(plan, Plan) or plan is None and not (doc.get("plan") or {}).get("path"):
        return plan
    path = plan if plan is not None else doc["plan"]["path"]
    if not Path(path).is_file():
        raise DataError(f"the report was made with the plan {path}, which is not here: give --plan PLAN "
                        "(its signature rules apply to the approval)")
    return load_plan(path)


def approve(folder, by: str, comment: str = "", key=None, acknowledge: bool = False, now=None, plan=None,
            replace: bool = False) -> dict:
    """Write REPORT/approval.json (and its signature with `key`); returns the approval. The plan's
    rules apply here: one that requires signatures refuses an unsigned approval, and a signature
    must be by a key the plan's allowed signers list for `by`. `replace`: a new approval of a
    report approved already, the earlier one kept in approvals/ (both keep verifying)."""
    folder = Path(folder)
    doc = _report(folder)
    by = (by or "").strip()
    if not by or any(not c.isprintable() for c in by):
        raise DataError("--by must name the approver (printable text)")
    verdict = doc.get("verdict")
    if verdict != "GO" and not acknowledge:
        raise DataError(f"the report's verdict is {verdict}, not GO: only a GO can be approved "
                        "(--acknowledge records that you have read it, which never completes a phase)")
    old = folder / APPROVAL
    if old.exists() and not replace:
        try:
            was = json.loads(old.read_text())
            who = f"{was.get('kind', 'approval')} by {was.get('by')} at {was.get('at')}"
        except (OSError, ValueError):
            who = "an unreadable approval"
        raise DataError(f"{old} exists ({who}): --replace records a new one and keeps that one in {HISTORY}/")
    if key is not None and not Path(key).is_file():
        raise DataError(f"--key: no such key file: {key}")
    rules = _plan_of(doc, plan)
    if rules is not None and rules.require_signature and key is None:
        raise DataError(f"the plan {rules.path} requires signed approvals (require_signature = true): add --key SSH_KEY, "
                        f"a key listed for {by} in {rules.allowed_signers}")
    approval = {
        "kind": "acknowledgement" if verdict != "GO" or acknowledge else "approval",
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
            if rules is not None and rules.allowed_signers is not None:
                _check_signer(Path(tmp), staged.read_bytes(), by, rules.allowed_signers)
        if old.exists():  # --replace: the earlier record moves into the history, whole
            keep = folder / HISTORY / _stamp_of(old)
            keep.mkdir(parents=True)
            if (folder / SIGNATURE).exists():
                os.replace(folder / SIGNATURE, keep / SIGNATURE)
            os.replace(old, keep / APPROVAL)
        if key is not None:
            os.replace(Path(tmp) / SIGNATURE, folder / SIGNATURE)
        os.replace(staged, folder / APPROVAL)  # last: an approval file always has its signature beside it
    from .stamp import write as write_stamp
    from .store import sha256

    write_stamp(folder, approval, sha256(folder / APPROVAL))  # where a reviewer looks: the PDF
    return approval


def _stamp_of(path: Path) -> str:
    """A history folder's name: when the replaced approval was made, made unique."""
    try:
        at = str(json.loads(path.read_text()).get("at", ""))
    except (OSError, ValueError):
        at = ""
    base = "".join(c for c in at if c.isalnum()) or "unknown"
    n, name = 1, base
    while (path.parent / HISTORY / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _check_signer(sigdir: Path, raw: bytes, by: str, allowed_signers: Path) -> None:
    """The signature just made must verify as `by`'s in the allowed-signers file, before anything is written."""
    if not Path(allowed_signers).is_file():
        raise DataError(f"the plan's allowed_signers file does not exist: {allowed_signers}")
    res = _ssh_keygen("-Y", "verify", "-f", allowed_signers, "-I", by, "-n", NAMESPACE, "-s", sigdir / SIGNATURE,
                      stdin=raw)
    if res.returncode != 0:
        raise DataError(f"--key is not listed for {by} in {allowed_signers}: the plan would not accept this "
                        "approval (nothing was written)")


@dataclass
class Verification:
    ok: bool
    approval: dict | None
    problem: str = ""       # the first thing that does not hold, in words
    signed: bool = False     # a signature exists and is valid
    signer_checked: bool = False  # ... and its key is the approver's in the allowed-signers file
    history: int = 0  # earlier approvals kept in approvals/, each verified too

    @property
    def line(self) -> str:
        a = self.approval or {}
        if not self.ok:
            return f"NOT VALID: {self.problem}"
        how = ("signed, key checked against the allowed signers" if self.signer_checked else
               "signed (key not checked: no allowed-signers file given)" if self.signed else "unsigned")
        earlier = f"; {self.history} earlier approval(s) in {HISTORY}/ verified too" if self.history else ""
        return f"{a['kind']} by {a['by']} at {a['at']} ({how}); {len(a['files'])} files unchanged{earlier}"


def verify(folder, allowed_signers=None) -> Verification:
    """Every hash and the signature of REPORT/approval.json, and of each earlier approval kept in
    approvals/. Raises DataError when there is no approval to check (bad input); a changed file or
    a bad signature is a failed Verification. With `allowed_signers`, an approval must be signed,
    by the key that file lists for the approver it names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"report folder does not exist: {folder}")
    if not (folder / APPROVAL).exists():
        raise DataError(f"{folder} has no {APPROVAL}: the report has not been approved")
    if allowed_signers is not None and not Path(allowed_signers).is_file():
        raise DataError(f"--allowed-signers: no such file: {allowed_signers}")
    now = _covered(folder)
    res = _check(folder, folder, now, allowed_signers)
    if not res.ok:
        return res
    from .stamp import STAMPED, problem as stamp_problem
    from .store import sha256

    if (folder / STAMPED).exists():
        why = stamp_problem(folder, sha256(folder / APPROVAL))
        if why:
            return Verification(False, res.approval, why)
    hist = folder / HISTORY
    if hist.is_dir():
        for entry in sorted(hist.iterdir()):
            extra = [p.name for p in entry.iterdir() if p.name not in (APPROVAL, SIGNATURE)] if entry.is_dir() else [""]
            if extra or not (entry / APPROVAL).is_file():
                what = f"{HISTORY}/{entry.name}" + (f"/{extra[0]}" if extra and extra[0] else "")
                return Verification(False, res.approval, f"{what} was added after the approval (not an approval record)")
            old = _check(folder, entry, now, allowed_signers)
            if not old.ok:
                return Verification(False, res.approval, f"{HISTORY}/{entry.name}: {old.problem}")
            res.history += 1
    return res


def _check(folder: Path, where: Path, now: dict, allowed_signers) -> Verification:
    """One approval record (its approval.json and .sig in `where`) against the folder's files now."""
    path = where / APPROVAL
    try:
        raw = path.read_bytes()
        approval = json.loads(raw)
        files = approval["files"]
        approval["by"], approval["at"], approval["kind"]  # noqa: B018 - the keys a reader relies on
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Verification(False, None, f"{APPROVAL} is unreadable or incomplete ({exc})")
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
        if (where / SIGNATURE).exists():
            return Verification(False, approval, f"{SIGNATURE} exists but {APPROVAL} says it is unsigned")
        if allowed_signers is not None:
            return Verification(False, approval, f"the approval by {approval['by']} is unsigned; the allowed signers "
                                                 "can only vouch for a signed one")
        return Verification(True, approval)
    if not (where / SIGNATURE).is_file():
        return Verification(False, approval, f"{SIGNATURE} is missing")
    if sig.get("principal", approval["by"]) != approval["by"]:
        # The approver is who signed, never a free-text field beside the signature.
        return Verification(False, approval, f"{APPROVAL} names {approval['by']} but was signed as {sig.get('principal')}")
    if allowed_signers is not None:
        res = _ssh_keygen("-Y", "verify", "-f", allowed_signers, "-I", approval["by"],
                          "-n", NAMESPACE, "-s", where / SIGNATURE, stdin=raw)
    else:
        res = _ssh_keygen("-Y", "check-novalidate", "-n", NAMESPACE, "-s", where / SIGNATURE, stdin=raw)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()
        return Verification(False, approval, f"bad signature on {APPROVAL}: {why[-1] if why else 'ssh-keygen refused it'}")
    if sig.get("key") and sig["key"] not in res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace"):
        return Verification(False, approval, f"{SIGNATURE} was made with another key than the one {APPROVAL} names")
    return Verification(True, approval, signed=True, signer_checked=allowed_signers is not None)
