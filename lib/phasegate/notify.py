"""Notifications: a short Slack-compatible summary POSTed to a webhook when a report finishes.

The webhook URL comes from an environment variable (a Slack URL is itself a credential), is
never printed or stored, and only its variable's name appears in messages. By default a
message goes out only when the phase's verdict differs from the last one delivered, so an
hourly interim report that says PENDING again stays quiet. The last delivered verdict is kept
per phase beside the reports; a failed delivery does not update it, so the change is sent
again on the next run instead of being lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .apiclient import fetch
from .window import iso, utcnow

DEFAULT_ENV = "PHASEGATE_WEBHOOK_URL"
MODES = ("change", "always", "never")
STATE_FILE = ".notify-state.json"


@dataclass
class NotifyResult:
    sent: bool
    line: str  # what happened, in one line (no URL)
    failed: bool = False
    configured: bool = True  # False: no webhook variable set


def message(doc: dict, report_path, previous: str | None) -> dict:
    """The summary: verdict (and the one before), why, failed criteria, where the report is."""
    v = doc["verdict"]
    was = f" (was {previous})" if previous and previous != v else ""
    failed = [c for c in doc["criteria"] if c["passed"] is False and not c.get("dry_run")]
    lines = [f"*{doc['phase']}*: *{v}*{was} — {doc['reason']}",
             f"window {doc['window']['start']} → {doc['window']['end']}, observed to {doc['window']['observed_end']}"]
    for c in failed[:6]:
        detail = c["detail"] if len(c["detail"]) <= 200 else c["detail"][:199] + "…"
        lines.append(f"• {c['kind']} {c['id']}: {detail}")
    for r in doc.get("runbook", [])[:1]:
        lines.append(f"runbook: {r['title']}: {r['steps'][0] if r['steps'] else ''}")
    lines.append(f"report: {report_path}")
    text = "\n".join(lines)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, folder / STATE_FILE)


def notify(doc: dict, report_path, state_dir, mode: str = "change", env_name: str = DEFAULT_ENV,
           timeout_s: float = 10.0) -> NotifyResult:
    """Send the summary if the mode asks for it and the webhook is configured; never raises."""
    if mode == "never":
        return NotifyResult(False, "notify: off (--notify never)")
    url = os.environ.get(env_name, "")
    if not url:
        return NotifyResult(False, f"notify: not sent: ${env_name} is not set", configured=False)
    if not _is_http(url):
        return NotifyResult(False, f"notify: not sent: ${env_name} is not an http(s) URL", failed=True)
    folder = Path(state_dir)
    state = _state(folder)
    previous = state.get("verdict")
    if mode == "change" and previous == doc["verdict"]:
        return NotifyResult(False, f"notify: not sent: verdict unchanged ({previous}) since {state.get('as_of')}")
    why = _post(url, message(doc, report_path, previous), timeout_s)
    if why:
        return NotifyResult(False, f"notify: webhook in ${env_name} failed ({why}); the {doc['verdict']} "
                                   f"will be sent again on the next run", failed=True)
    _save_state(folder, {"verdict": doc["verdict"], "as_of": doc["as_of"], "sent_at": iso(utcnow()),
                         "report": str(report_path)})
    was = f" (was {previous})" if previous and previous != doc["verdict"] else ""
    return NotifyResult(True, f"notify: sent {doc['verdict']}{was} to the webhook in ${env_name}")


def send_text(text: str, env_name: str = DEFAULT_ENV, timeout_s: float = 10.0) -> str:
    """POST {"text": ...} to the webhook if one is configured; what happened in one line ("" when
    no webhook is set). Never raises: a notification never stops what it reports."""
    url = os.environ.get(env_name, "")
    if not url:
        return ""
    if not _is_http(url):
        return f"notify: not sent: ${env_name} is not an http(s) URL"
    why = _post(url, {"text": text}, timeout_s)
    return f"notify: webhook in ${env_name} failed ({why})" if why else f"notify: sent to the webhook in ${env_name}"


def _is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _post(url: str, payload: dict, timeout_s: float) -> str | None:
    """POST `payload` as JSON under a total deadline: None when delivered (2xx), else why not."""
    body = json.dumps(payload).encode()
    ex = fetch(url, "POST", {"Content-Type": "application/json", "Content-Length": str(len(body)),
                             "User-Agent": "phasegate"}, body, timeout_s, 65536)
    if ex.outcome is not None:
        return ex.error
    return None if 200 <= (ex.status or 0) < 300 else f"HTTP {ex.status}"
