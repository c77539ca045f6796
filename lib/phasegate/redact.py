"""Redaction: what may leave the process in a URL, a header, a body or a message."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "[REDACTED]"
_SECRET_NAMES = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "signature", "sig", "auth",
                 "access_token", "refresh_token", "client_secret", "api_key", "private_key"}
_SECRET_SUFFIX = re.compile(r"[_\-.](key|token|secret|password|passwd|signature|sig)$", re.I)
_SECRET_HEADER = re.compile(r"^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|.*token.*|.*secret.*)$", re.I)
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.S)
# The lookbehind starts a name only where a run of name characters starts: without it a long run
# with no "=" (a 60,000-character header) was tried from every position, quadratic in its length.
_QUERY_PAIR = re.compile(r"(?<![A-Za-z0-9_.\-])([A-Za-z0-9_.\-]+)=([^&\s\"'<>]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/@\s:]*):([^/@\s]+)@")


MAX_VALUE_CHARS = 256


def capped(value, limit: int = MAX_VALUE_CHARS):
    """A stored string cut to `limit` characters, saying how much was cut (a 60,000-character
    header must not ride through every table and export). Anything else is returned as is."""
    if not isinstance(value, str) or len(value) <= limit:
        return value
    mark = f"…[truncated: {len(value):,} chars]"
    return value[: limit - len(mark)] + mark


def printable(text: str) -> str:
    """Text safe for a terminal or log: control characters (ESC, CR, ...) shown escaped, so a
    service cannot repaint the screen over a failing line. Newlines and tabs stay."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def one_line(text) -> str:
    """A service's value shown inside one line of output: every control character escaped,
    newlines too, so an error code cannot print a forged line of its own."""
    text = str(text)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Secret(str):
    """A string that prints as redacted; use `.reveal()` where the value is really needed."""

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec) -> str:
        return MASK

    def reveal(self) -> str:
        return str.__str__(self)


def is_secret_name(name: str) -> bool:
    """key, token, api_key, X-Amz-Signature...: yes; keyboard, monkey, domain: no."""
    low = name.lower()
    return low in _SECRET_NAMES or bool(_SECRET_SUFFIX.search(low))


def is_secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.match(name)) or is_secret_name(name)


def redact_url(url: str) -> str:
    """Mask userinfo passwords and query parameters named like key/token/secret/password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="[]")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_headers(headers: dict, keep: tuple[str, ...] | None = None) -> dict:
    """Headers safe to store: secrets masked, and only `keep` names when given."""
    out = {}
    for name, value in headers.items():
        low = name.lower()
        if keep is not None and low not in keep:
            continue
        out[low] = MASK if is_secret_header(low) else value
    return out


def redact_text(text: str, secrets: list[str] | tuple = ()) -> str:
    """Scrub known secret values, bearer tokens, PEM blocks, `key=` pairs and URL passwords."""
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    text = _PEM.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _QUERY_PAIR.sub(lambda m: f"{m.group(1)}={MASK}" if is_secret_name(m.group(1)) else m.group(0), text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    return text


# Columns a sample's producer sets itself; every other string in a row may have come from the
# service (a status, a code, a header, a flag) and is scrubbed before it is stored.
_OWN_COLUMNS = frozenset({"ts", "run_id", "seq", "request_id", "source", "target", "tenant", "probe", "method",
                          "url", "outcome", "simulated", "shard", "evidence"})


def scrub_row(row: dict, secrets=()) -> dict:
    """The one place where values that came from a service are scrubbed of secrets, whatever
    column they land in (error_code, deployment_id, health_status, flags, assertion messages,
    error): a service that reflects the bearer token into X-Deployment-Id stores [REDACTED]."""
    for name, value in row.items():
        if name in _OWN_COLUMNS:
            continue
        if isinstance(value, str):
            row[name] = redact_text(value, secrets)
        elif isinstance(value, list):
            row[name] = [redact_text(v, secrets) if isinstance(v, str) else v for v in value]
    return row
