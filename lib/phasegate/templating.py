"""The one Jinja2 environment behind every HTML page and fragment phasegate writes.

Autoescaping is on for every template, so a service's text (a response body, a log line, a flag
value) can never become markup; the number formats the report states its figures in are filters,
so a template says `{{ s.error_rate | num("ratio") }}` and a designer changes a page without Python.
"""

from __future__ import annotations

import json
from functools import lru_cache


def num(v, unit="") -> str:
    """One unit per kind of figure: rates in %, latency in ms with one decimal (s above 10 s)."""
    if v is None:
        return "–"
    if unit == "ratio":
        return pct(v)
    if unit == "ms":
        return ms(v)
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") + (f" {unit}" if unit else "")
    return f"{v:,}" + (f" {unit}" if unit else "")


def pct(v) -> str:
    if v is None:
        return "–"
    p = v * 100
    return "0 %" if p == 0 else f"{p:.2f} %" if p >= 0.1 else f"{p:.2g} %"


def ms(v) -> str:
    if v is None:
        return "–"
    return f"{v / 1000:,.1f} s" if v >= 10_000 else f"{v:,.1f} ms"


def count(v) -> str:
    """A count with thousands separators; a float count (an expected number) to the whole."""
    if v is None:
        return "–"
    return f"{v:,.0f}" if isinstance(v, float) else f"{v:,}"


def short(text, n: int = 170) -> str:
    """One line of at most n characters, cut with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def folder(path: str) -> str:
    """A file's report folder (`<phase>/<stamp>`), not its whole path: a full path wraps over many
    lines in a PDF table cell."""
    return "/".join(str(path).replace("\\", "/").split("/")[-3:-1])


def json_text(v, **kw) -> str:
    """A value as JSON text, escaped by the template like any other text (Jinja's tojson is for
    scripts)."""
    return json.dumps(v, **kw)


@lru_cache(maxsize=1)
def env():
    from jinja2 import Environment, PackageLoader

    e = Environment(loader=PackageLoader("phasegate", "templates"), autoescape=True, trim_blocks=True,
                    lstrip_blocks=True)
    e.filters.update(num=num, pct=pct, ms=ms, count=count, short=short, folder=folder, json_text=json_text)
    return e


def render(name: str, **context) -> str:
    return env().get_template(name).render(**context)
