"""HTML and PDF of an executed notebook, in a helper process that gets ready while the kernel runs.

nbconvert and WeasyPrint take ~1.3 s to import and WeasyPrint's first document loads the fonts:
work that does not depend on the notebook. `Exporter` starts a second interpreter that does it on
the other core while papermill's kernel executes, then hands it the executed notebook. A process,
not a thread: two threads importing modules for the first time can fail ("partially initialized
module"), and a go/no-go must not fail one run in four.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from html import escape as html_escape
from pathlib import Path

from .errors import ReportError

_EXTERNAL = re.compile(r"<script[^>]+src=\"https?://[^\"]*\"[^>]*>\s*</script>|<link[^>]+href=\"https?://[^\"]*\"[^>]*>", re.I)
_PRINT_CSS = """<style>
@page { size: A4; margin: 14mm 12mm 16mm 12mm; font-family: sans-serif;
  @bottom-left { content: "%(footer)s"; font-size: 8px; color: #57606a; }
  @bottom-right { content: "Page " counter(page) " of " counter(pages); font-size: 8px; color: #57606a; } }
@media print { body { font-size: 10px; } .jp-OutputArea-output img { max-width: 100%%; } }
h1, h2, h3, h4 { break-after: avoid; page-break-after: avoid; }
/* The lab template lays each output out as a flex row; a page break inside a flex item is lost.
   Its output is a table cell: each one then gets an anonymous table, laid out by measuring the
   narrowest and widest its whole content can be (~0.3 s of a 7-page report's 1.1 s). */
.jp-OutputArea-child, .jp-Cell-outputWrapper, .jp-OutputArea, .jp-OutputArea-output { display: block !important; }
/* The footer and watermark in the body's face too: two serif fonts fewer to subset (~0.1 s). */
.pg-watermark { font-family: sans-serif; position: fixed; top: 42%%; left: 0; width: 100%%; text-align: center; font-size: 96px;
  font-weight: bold; color: rgba(207, 34, 46, 0.13); transform: rotate(-35deg); z-index: 1000; pointer-events: none; }
</style>"""


def export_html(ipynb: Path) -> str:
    """Self-contained HTML of the executed notebook, without code cells or prompts; its title, page
    footer and watermark from the document the notebook wrote beside it (signoff.json)."""
    import nbformat

    doc = None
    try:
        doc = json.loads(Path(ipynb).with_suffix(".json").read_text())
    except (OSError, ValueError):
        pass
    return _html_of(nbformat.read(ipynb, as_version=4), doc)


def _head(doc: dict | None) -> tuple[str, str, str]:
    """(<title> and <meta> for the PDF's metadata, the page footer, the watermark) of a sign-off."""
    from . import __version__

    if not doc or "verdict" not in doc:
        title = f"Rollout summary: {doc['plan']['name']}" if doc and "plan" in doc else "phasegate report"
        return f"<title>{html_escape(title)}</title>", f"phasegate {__version__}", ""
    w = doc["window"]
    title = f"Phase sign-off: {doc['phase']} — {doc['verdict']}"
    subject = f"{doc['target']['name']}, window {w['start']} to {w['end']}: {doc['reason']}"
    mode = {"drill": "DRILL", "simulated": "SIMULATED"}.get(doc.get("mode"), "")
    meta = (f"<title>{html_escape(title)}</title><meta name=\"description\" content=\"{html_escape(subject)}\">"
            f"<meta name=\"generator\" content=\"phasegate {__version__}\">")
    footer = f"{title} · {w['start']} → {w['end']} · phasegate {__version__}" + (f" · {mode}" if mode else "")
    mark = f'<div class="pg-watermark">{mode}</div>' if mode else ""
    return meta, footer.replace('"', "'"), mark


def _html_of(nb, doc: dict | None = None) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    exporter.log.setLevel(logging.ERROR)  # its "alt text missing" warning: we put the alt back below
    body, _ = exporter.from_notebook_node(nb)
    # The lab template drops each image's alt text (our figure titles); restore it in order.
    alts = iter([o.get("metadata", {}).get("image/png", {}).get("alt", "figure")
                 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})])
    body = re.sub(r'alt="No description has been provided for this image"',
                  lambda _m: f'alt="{html_escape(next(alts, "figure"))}"', body)
    # Offline and self-contained: drop CDN scripts (require.js, MathJax) the template links.
    body = _EXTERNAL.sub("", body)
    meta, footer, mark = _head(doc)
    body = re.sub(r"<title>.*?</title>", "", body, count=1, flags=re.S)
    body = body.replace("</head>", meta + _PRINT_CSS % {"footer": html_escape(footer)} + "</head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + mark, body, count=1)


_STYLE = re.compile(r"<style( type=\"text/css\")?>(.*?)</style>", re.S)
_PARSED: dict = {}  # <style> block -> its parsed CSS: the lab template's 240 KB parse once per process


def _quiet_pdf_logs() -> None:
    logging.getLogger("weasyprint").setLevel(logging.ERROR)  # the lab CSS has rules it ignores
    logging.getLogger("fontTools").setLevel(logging.ERROR)


def export_pdf(html: str, dest: Path) -> None:
    HTML = weasyprint_html()
    _quiet_pdf_logs()
    sheets = []
    # The document's <style> blocks are handed over as parsed stylesheets, in document order
    # (already parsed when the helper warmed up on the same template). WeasyPrint ranks them as
    # user style, which changes nothing here: only inline attributes remain as author style, and
    # they outrank sheets either way. Anything but plain <style> blocks (or an inline SVG, whose
    # own <style> must stay inside it): rendered as it is.
    if len(_STYLE.findall(html)) == html.count("<style") and "<svg" not in html:
        sheets = [_parsed(block.group(0), block.group(2)) for block in _STYLE.finditer(html)]
        html = _STYLE.sub("", html)
    try:
        HTML(string=html, base_url=str(dest.parent)).write_pdf(str(dest), stylesheets=sheets)
    except (OSError, ValueError) as exc:
        raise ReportError(f"PDF export failed: {exc}") from None


def _parsed(block: str, text: str):
    from weasyprint import CSS

    if block not in _PARSED:
        _PARSED[block] = CSS(string=text)
    return _PARSED[block]


def export(ipynb: Path, html_out: Path | None, pdf_out: Path | None) -> None:
    """Write the HTML and/or PDF of an executed notebook."""
    html = export_html(ipynb)
    if html_out:
        html_out.write_text(html, encoding="utf-8")
    if pdf_out:
        export_pdf(html, pdf_out)


class Exporter:
    """`export` run by a helper process started now (it imports and warms up meanwhile).
    Use as a context manager: leaving it without `run` stops the helper."""

    def __init__(self):
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "phasegate.export"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._err, text=True)

    def run(self, ipynb: Path, html_out: Path | None, pdf_out: Path | None, timeout_s: float | None = None) -> None:
        """Export, or a ReportError once `timeout_s` (default $PHASEGATE_EXPORT_TIMEOUT or 600 s) has
        passed: a document that cannot be laid out must not hold an hourly job forever."""
        timeout_s = timeout_s or float(os.environ.get("PHASEGATE_EXPORT_TIMEOUT", "600"))
        request = {"ipynb": str(ipynb), "html": html_out and str(html_out), "pdf": pdf_out and str(pdf_out)}
        try:
            out, _ = self._proc.communicate(json.dumps(request) + "\n", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise ReportError(f"the HTML/PDF export did not finish within {timeout_s:g} s and was stopped "
                              f"(the executed notebook is {ipynb}); set PHASEGATE_EXPORT_TIMEOUT to allow more") from None
        except OSError:  # it died before reading the request: its stderr says why
            out = ""
            self._proc.wait()
        answer = out.strip().splitlines()[-1] if out.strip() else ""
        reply = json.loads(answer) if answer.startswith("{") else {"error": self._last_error()}
        if reply.get("error"):
            raise ReportError(reply["error"])

    def _last_error(self) -> str:
        self._err.seek(0)
        lines = [ln for ln in self._err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return f"the export process exited {self._proc.returncode}: {lines[-1] if lines else 'no message'}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe and not pipe.closed:
                pipe.close()
        self._err.close()


_WARM = "<html><body><p>warm <b>up</b> <code>fonts</code></p><table><tr><td>1</td></tr></table></body></html>"


def weasyprint_html():
    """WeasyPrint's HTML class, imported without the compiler runs. cffi looks up each name
    WeasyPrint tries for its libraries (Windows and macOS names first) with ctypes' find_library,
    which on Linux runs gcc and ld for every name that is not a file (Kozea/WeasyPrint#1125):
    measured, 25 gcc runs and 0.6 s off a report's floor. The name that loads is the soname,
    which the dynamic loader finds by itself, so the lookup is left to ldconfig's cache meanwhile."""
    import ctypes.util

    saved = {name: getattr(ctypes.util, name) for name in ("_findLib_gcc", "_findLib_ld") if hasattr(ctypes.util, name)}
    for name in saved:
        setattr(ctypes.util, name, lambda _lib: None)
    try:
        from weasyprint import HTML
    finally:
        for name, fn in saved.items():
            setattr(ctypes.util, name, fn)
    return HTML


def _serve() -> None:
    """The helper: import and warm up, then export the one notebook it is asked for."""
    os.nice(10)  # the kernel, which the report waits for, goes first when both want a core
    import nbformat

    HTML = weasyprint_html()

    _quiet_pdf_logs()  # before the warm-up: its stderr must end with a real error, if any
    # The template's own styles, parsed now: every document repeats them.
    warm = _html_of(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("warm up")]))
    for block in _STYLE.finditer(warm):
        _parsed(block.group(0), block.group(2))
    HTML(string=_WARM).write_pdf()  # fontconfig and the fonts load on the first document
    line = sys.stdin.readline()
    if not line.strip():
        return  # the report failed before its export: nothing to do
    req = json.loads(line)
    try:
        export(Path(req["ipynb"]), req["html"] and Path(req["html"]), req["pdf"] and Path(req["pdf"]))
        print(json.dumps({"error": None}), flush=True)
    except ReportError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
    # The files are written and closed: skip the interpreter's teardown of nbconvert and
    # WeasyPrint (~0.3 s the report would wait for).
    os._exit(0)


if __name__ == "__main__":
    _serve()
