"""The report's figures, drawn from an Analysis (its timelines) and the sign-off result."""

from __future__ import annotations

import io
import matplotlib
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .analysis import Analysis

# Figures are built without pyplot: no global state, and no second copy auto-displayed
# by Jupyter's inline backend next to the PNG the notebook shows.
STYLE = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3}


def _figure(w, h):
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(w, h), dpi=90)
        return fig, fig.subplots()


def png(fig) -> bytes:
    """The figure as PNG bytes (embedded inline in the notebook, HTML and PDF)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png")
    return buf.getvalue()


def image(fig):
    """An IPython PNG image whose alt text is the figure's title (read by screen readers and exports)."""
    from IPython.display import Image

    title = fig.axes[0].get_title() if fig.axes else "figure"
    return Image(png(fig), alt=title)


def img(fig) -> str:
    """The figure as an inline <img> (alt text: its title), to sit in one HTML block with the
    heading above it: a heading and its figure in separate outputs could be split across pages."""
    import base64
    from html import escape

    title = fig.axes[0].get_title() if fig.axes else "figure"
    return (f'<img alt="{escape(title)}" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png(fig)).decode()}">')


def _fmt(ax, a: Analysis):
    ax.set_xlim(a.window.start, a.observed_end)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz="UTC"))
    ax.set_xlabel("time (UTC)")


def errors_over_time(a: Analysis):
    fig, ax = _figure(10, 2.8)
    t = a.timeline
    buckets = np.sort(t["bucket"].unique())
    width = pd.Timedelta(np.diff(buckets).min()) if len(buckets) > 1 else pd.Timedelta("5min")
    bottom = None
    colors = matplotlib.colormaps["tab10"].colors
    hatches = ["", "//", "xx", "..", "\\\\", "++", "--", "oo"]  # the probes told apart in grayscale too
    for k, (probe, g) in enumerate(t.groupby("probe")):
        s = g.set_index("bucket")["errors"]
        base = bottom.reindex(s.index).fillna(0) if bottom is not None else pd.Series(0, index=s.index)
        hit = s > 0  # a day of 5-minute buckets is ~1,000 bars per probe: draw only those with errors
        ax.bar(s.index[hit], s.values[hit], width=width, bottom=base[hit].values, align="edge",
               label=f"{probe} ({int(s.sum()):,})", color=colors[k % 10], hatch=hatches[k % len(hatches)],
               edgecolor="white", linewidth=0.3)
        bottom = s if bottom is None else bottom.add(s, fill_value=0)
    if bottom is None or not (bottom > 0).any():
        ax.text(0.5, 0.5, "no errors in the window", transform=ax.transAxes, ha="center", va="center",
                color="#1a7f37")
    five = t.groupby("bucket")["http_5xx"].sum()
    five = five[five > 0]
    if len(five):
        ax.scatter(five.index, five.values, marker="v", color="black", zorder=5, label="5xx")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("errors per bucket")
    ax.set_title("Error events over time")
    ax.legend(loc="upper left", fontsize=7, ncol=5)
    _fmt(ax, a)
    fig.tight_layout()
    return fig


def latency_over_time(a: Analysis, probe: str | None, threshold_ms: float | None):
    fig, ax = _figure(10, 2.8)
    t = a.timeline
    g = t[t["probe"] == probe] if probe else t
    for col, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
        s = g.groupby("bucket")[col].max() / 1000.0
        ax.plot(s.index, s.values, style, label=col.replace("_ms", ""))
    if threshold_ms:
        ax.axhline(threshold_ms / 1000.0, color="red", lw=1, label=f"{threshold_ms / 1000:g} s target")
    ax.set_ylabel("seconds")
    ax.set_title(f"Latency of {probe or 'all probes'} per bucket")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    _fmt(ax, a)
    fig.tight_layout()
    return fig


def availability_heatmap(a: Analysis):
    c = a.coverage_hourly
    piv = c.pivot(index="probe", columns="hour", values="availability")
    fig, ax = _figure(10, 0.5 + 0.4 * len(piv))
    im = ax.imshow(piv.to_numpy(dtype=float), aspect="auto", cmap="RdYlGn", vmin=0.9, vmax=1.0,
                   interpolation="nearest")
    ax.set_yticks(range(len(piv)), piv.index)
    step = max(1, len(piv.columns) // 12)
    ax.set_xticks(range(0, len(piv.columns), step), [h.strftime("%m-%d %H") for h in piv.columns[::step]],
                  rotation=30, fontsize=7)
    ax.grid(False)
    ax.set_title("Availability per probe per hour (share of attempts without error; blank = no attempts)")
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    return fig


def coverage_plot(a: Analysis):
    c = a.coverage_hourly.groupby("hour")[["actual", "expected"]].sum()
    fig, ax = _figure(10, 2.4)
    ratio = np.where(c["expected"] > 0, c["actual"] / c["expected"].where(c["expected"] > 0), np.nan)
    ax.bar(c.index, np.minimum(ratio, 1.2), width=pd.Timedelta("55min"), align="edge",
           color=["#cf222e" if r < 0.9 else "#2da44e" for r in np.nan_to_num(ratio)])
    ax.axhline(a.coverage["min_coverage"], color="black", lw=1, ls="--", label="required")
    ax.set_ylabel("actual / expected")
    ax.set_title("Monitoring coverage per hour (red: gap)")
    ax.legend(loc="lower left", fontsize=7)
    _fmt(ax, a)
    fig.tight_layout()
    return fig


def state_timeline(a: Analysis):
    """Deployment ids and flag states over the window, as spans drawn from their change points
    (cheap at any sample count: the changes were found over every observation)."""
    fig, ax = _figure(10, 1.8)
    end = pd.Timestamp(a.observed_end)
    colors = matplotlib.colormaps["tab10"].colors
    seq = a.deployments["sequence"]
    ids = list(dict.fromkeys(s["id"] for s in seq))
    hatches = ["", "//", "xx", "..", "\\\\", "++"]  # tell the ids apart in grayscale too
    labelled = set()
    for k, run in enumerate(seq):
        t0 = pd.Timestamp(run["from"])
        t1 = pd.Timestamp(seq[k + 1]["from"]) if k + 1 < len(seq) else end
        i = ids.index(run["id"])
        ax.barh(1, t1 - t0, left=t0, height=0.5, color=colors[i % 10], hatch=hatches[i % len(hatches)],
                edgecolor="white", label=None if run["id"] in labelled else run["id"])
        labelled.add(run["id"])
    on: dict[str, bool] = {}
    points = []
    for change in a.flags["changes"]:
        on[change["flag"]] = change["value"] is True
        points.append((pd.Timestamp(change["ts"]), all(on.values())))
    for k, (t0, all_on) in enumerate(points):
        t1 = points[k + 1][0] if k + 1 < len(points) else end
        ax.barh(0, t1 - t0, left=t0, height=0.5, color="#2da44e" if all_on else "#cf222e",
                hatch="" if all_on else "xx", edgecolor="white")
    ax.set_yticks([1, 0], ["deployment", "flags: all on (plain) / off (hatched)"])
    ax.set_ylim(-0.6, 1.6)
    ax.set_title("Deployments and feature flags")
    if ids:
        # Beside the axes, not on them: inside, the legend covered the deployment bar it explains.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="deployment id", title_fontsize=7,
                  borderaxespad=0.0)
    _fmt(ax, a)
    fig.tight_layout()
    return fig


def ecdf_canary_vs_baseline(a: Analysis, probe: str):
    """Both latency distributions of one probe, as empirical CDFs on a log scale."""
    fig, ax = _figure(10, 2.8)
    for label, x in zip(("canary", "baseline"), a.ecdf.get(probe, ((), ()))):
        if len(x):
            ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=f"{label} (n={len(x):,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of samples ≤ x")
    ax.set_title(f"Latency of {probe}: canary vs baseline (ECDF)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def traffic_over_time(a: Analysis, bucket: str = "5 min"):
    """Real traffic per bucket: requests and 5xx, per source (a Prometheus row stands for `count`)."""
    fig, ax = _figure(10, 2.6)
    g = a.traffic_timeline  # requests and 5xx per source and bucket, counted by the engine
    for source, part in g.groupby("source"):
        part = part.set_index("bucket")
        ax.plot(part.index, part["requests"], label=f"requests ({source})")
        ax.plot(part.index, part["http_5xx"], "--", label=f"5xx ({source})")
    ax.set_ylabel(f"per {bucket}")
    ax.set_title("Real traffic: request rate and 5xx over time")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    _fmt(ax, a)
    fig.tight_layout()
    return fig


def rollout_timeline(doc: dict):
    """One bar per phase over its window, coloured by verdict; the part not yet observed hatched."""
    from .present import COLORS

    rows = [p for p in doc["phases"] if p.get("start")]
    fig, ax = _figure(10, 0.6 + 0.5 * max(1, len(doc["phases"])))
    labels = [p["title"] for p in doc["phases"]]
    for i, p in enumerate(doc["phases"]):
        if not p.get("start"):
            ax.text(0.01, i, "not started", transform=ax.get_yaxis_transform(), va="center", color="#6e7781")
            continue
        start, end, seen = (pd.Timestamp(p[k]) for k in ("start", "end", "observed_end"))
        color = COLORS.get(p["verdict"] or p["report_verdict"], "#6e7781")
        ax.barh(i, seen - start, left=start, color=color, height=0.5)
        if end > seen:
            ax.barh(i, end - seen, left=seen, color="white", edgecolor=color, hatch="//", height=0.5)
        ax.text(start, i + 0.33, p["verdict"] or p["report_verdict"] or "", fontsize=8, color=color)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    if rows:
        ax.axvline(pd.Timestamp(doc["as_of"]), color="black", lw=0.8, ls="--")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz="UTC"))
    ax.set_title("Rollout timeline: each phase's window, coloured by verdict (hatched: not yet observed)")
    fig.tight_layout()  # fixed margins cut the last date label ("12-04 06:0")
    return fig


def render_over_time(a: Analysis):
    """Render's own metrics: requests per resolution step by status class, its latency quantile,
    and the service's events as vertical lines (server_failed in red)."""
    r = a.render
    m = r["metrics"]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10, 3.6), dpi=90)
        top, bottom = fig.subplots(2, 1, sharex=True)
    series = pd.DataFrame(m["requests_series"], columns=["ts", "status", "requests"])
    if len(series):
        series["ts"] = pd.to_datetime(series["ts"], utc=True)
        series["class"] = (series["status"].fillna(0).astype(int) // 100).astype(str) + "xx"
        for cls, part in series.groupby("class"):
            per = part.groupby("ts")["requests"].sum()
            top.plot(per.index, per.values, marker=".", linewidth=1, label=cls,
                     color={"5xx": "#cf222e", "4xx": "#9a6700"}.get(cls))
        top.legend(loc="upper left", fontsize=7, ncol=4)
    top.set_ylabel(f"per {m['resolution_s']:g} s")
    top.set_title("Render: requests by status, latency quantile and events")
    lat = pd.DataFrame(m["latency"], columns=["ts", "ms", "quantile"])
    if len(lat):
        lat["ts"] = pd.to_datetime(lat["ts"], utc=True)
        bottom.plot(lat["ts"], lat["ms"], marker=".", linewidth=1,
                    label=f"p{m['latency_quantile'] * 100:g} {m['latency_path']} (per step)")
        bottom.legend(loc="upper left", fontsize=7)
    bottom.set_ylabel("ms")
    for e in r["events"]:
        t = pd.Timestamp(e["ts"])
        for ax in (top, bottom):
            ax.axvline(t, color="#cf222e" if e["type"] == "server_failed" else "#6e7781", linewidth=0.8,
                       linestyle="-" if e["type"] == "server_failed" else ":")
        top.annotate(e["type"], (t, 1.0), xycoords=("data", "axes fraction"), fontsize=6, rotation=90,
                     va="top", ha="right")
    _fmt(bottom, a)
    top.set_xlim(a.window.start, a.observed_end)
    fig.tight_layout()
    return fig
