"""An approved report's PDF as a reviewer finds it: `signoff.approved.pdf`, a page saying who
approved (or acknowledged) it, when, with what comment, signed or not and by which key, then the
report's own pages unchanged. The signed record stays `approval.json`: the stamped copy is made
from it after it is written, so it cannot be among the files it hashes; `verify` checks it
instead — its first page must name the SHA-256 of the approval.json beside it, and every later
page must be the report's page, content stream for content stream."""

from __future__ import annotations

import io
import os
from pathlib import Path

from .templating import render

STAMPED = "signoff.approved.pdf"
REPORT_PDF = "signoff.pdf"


def _page(approval: dict, approval_sha256: str) -> bytes:
    from .export import weasyprint_html

    HTML = weasyprint_html()

    sig = approval.get("signature")
    how = (f"signed with SSH key {sig.get('key')} (namespace {sig.get('namespace')}, principal {sig.get('principal')})"
           if sig else "unsigned")
    kind = approval["kind"].upper()
    r = approval.get("report") or {}
    w = r.get("window") or {}
    rows = [("Report", f"{r.get('phase')} — verdict {r.get('verdict')}"), ("Window", f"{w.get('start')} → {w.get('end')}"),
            (kind.capitalize() + " by", approval["by"]), ("At", approval["at"]), ("Comment", approval.get("comment") or "–"),
            ("Signature", how), ("approval.json SHA-256", approval_sha256),
            ("Files covered", f"{len(approval.get('files') or {})} (their SHA-256 in approval.json)")]
    html = render("approval_page.html.j2", kind=kind, phase=r.get("phase"), rows=rows, report_pdf=REPORT_PDF)
    return HTML(string=html).write_pdf()


def write(folder: Path, approval: dict, approval_sha256: str) -> Path | None:
    """signoff.approved.pdf in `folder` (None when the report has no PDF)."""
    from pypdf import PdfReader, PdfWriter

    folder = Path(folder)
    if not (folder / REPORT_PDF).is_file():
        return None
    out = PdfWriter()
    out.append(PdfReader(io.BytesIO(_page(approval, approval_sha256))))
    report = PdfReader(folder / REPORT_PDF)
    out.append(report)
    title = (report.metadata or {}).get("/Title") or "phasegate report"
    out.add_metadata({"/Title": f"{title} — {approval['kind']} by {approval['by']}"})
    tmp = folder / f".{STAMPED}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        out.write(fh)
    os.replace(tmp, folder / STAMPED)
    return folder / STAMPED


def problem(folder: Path, approval_sha256: str) -> str | None:
    """Why signoff.approved.pdf does not stand for the approval and report beside it, or None."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    folder = Path(folder)
    try:
        stamped, report = PdfReader(folder / STAMPED), PdfReader(folder / REPORT_PDF)
        if len(stamped.pages) != len(report.pages) + 1:
            return f"{STAMPED} has {len(stamped.pages)} pages, not the report's {len(report.pages)} and the approval page"
        if approval_sha256 not in "".join(stamped.pages[0].extract_text().split()):
            return f"{STAMPED}'s approval page does not name this {approval_sha256[:12]}… approval.json"
        for i, (a, b) in enumerate(zip(stamped.pages[1:], report.pages), start=2):
            if a.get_contents().get_data() != b.get_contents().get_data():
                return f"{STAMPED} page {i} is not the report's page {i - 1}"
    except FileNotFoundError as exc:
        return f"{Path(exc.filename).name} is missing beside {STAMPED}"
    except (PyPdfError, OSError, ValueError, KeyError, AttributeError) as exc:
        return f"{STAMPED} is unreadable ({type(exc).__name__})"
    return None
