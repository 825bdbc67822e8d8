"""``--plot PATH.svg``: latency percentiles over time, delivered chunks/s, and the latency histogram.

Plain SVG written by hand: no plotting dependency, opens in any browser, diffs as text.
"""

import itertools
import math
from html import escape
from typing import Any

_W, _H = 900, 640
_LEFT, _RIGHT = 70, 70
_SERIES = (("p50_ms", "#2f9e44", "p50"), ("p90_ms", "#f08c00", "p90"), ("p99_ms", "#e03131", "p99"))


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp: float = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10.0 * exp


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _axis_label(x: float, y: float, text: str, anchor: str = "end", size: int = 11) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="#555">{escape(text)}</text>'


def render_svg(result: dict[str, Any]) -> str:
    points = [p for p in result.get("timeline", []) if p.get("t") is not None]
    config = result.get("config", {})
    title = (
        f"streamfan loadtest · {config.get('scenario', '?')} · {config.get('clients', '?')} clients / "
        f"{config.get('conversations', '?')} conversations · {result.get('chunks_per_second')} chunks/s · "
        f"p99 {_ms(result.get('latency_ms', {}).get('p99'))} ms · {'OK' if result.get('ok') else 'FAILED'}"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        'font-family="system-ui, sans-serif">',
        f'<rect width="{_W}" height="{_H}" fill="#fff"/>',
        f'<text x="{_W / 2}" y="24" font-size="14" text-anchor="middle" fill="#222">{escape(title)}</text>',
    ]
    out += _timeline(points, top=50, height=300)
    out += _histogram(result.get("latency_histogram_ms", {}), top=420, height=170)
    out.append("</svg>")
    return "\n".join(out)


def _timeline(points: list[dict[str, Any]], top: int, height: int) -> list[str]:
    width = _W - _LEFT - _RIGHT
    out = [
        _axis_label(_LEFT, top - 8, "publish→client latency per second (ms, left) · chunks/s (right, grey)", "start")
    ]
    out.append(f'<rect x="{_LEFT}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#ccc"/>')
    if not points:
        out.append(_axis_label(_LEFT + width / 2, top + height / 2, "no data", "middle"))
        return out
    t_max = max(p["t"] for p in points) or 1.0
    finite = [p[k] for p in points for k, _, _ in _SERIES if p.get(k) is not None and math.isfinite(p[k])]
    y_max = _nice_max(max(finite, default=1.0))
    rate_max = _nice_max(max((p["chunks_per_second"] for p in points), default=1.0))

    def x(t: float) -> float:
        return _LEFT + width * max(t, 0) / t_max

    def y(v: float, top_value: float) -> float:
        return top + height - height * min(v, top_value) / top_value

    for i in range(5):
        value = y_max * i / 4
        out.append(_axis_label(_LEFT - 6, y(value, y_max) + 4, f"{value:g}"))
        rate = rate_max * i / 4
        out.append(_axis_label(_LEFT + width + 6, y(rate, rate_max) + 4, f"{rate:g}", "start"))
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + width}" y1="{y(value, y_max):.1f}" y2="{y(value, y_max):.1f}" '
            'stroke="#eee"/>'
        )
    for i in range(6):
        t = t_max * i / 5
        out.append(_axis_label(x(t), top + height + 16, f"{t:.0f}s", "middle"))
    rate_path = " ".join(f"{x(p['t']):.1f},{y(p['chunks_per_second'], rate_max):.1f}" for p in points)
    out.append(f'<polyline points="{rate_path}" fill="none" stroke="#adb5bd" stroke-width="1.5"/>')
    for key, color, _label in _SERIES:
        coords = [
            f"{x(p['t']):.1f},{y(p[key], y_max):.1f}"
            for p in points
            if p.get(key) is not None and math.isfinite(p[key])
        ]
        if coords:
            out.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{color}" stroke-width="2"/>')
    for i, (_, color, label) in enumerate(_SERIES):
        lx = _LEFT + 10 + i * 60
        out.append(f'<rect x="{lx}" y="{top + 8}" width="12" height="3" fill="{color}"/>')
        out.append(_axis_label(lx + 16, top + 13, label, "start"))
    return out


def _histogram(hist: dict[str, Any], top: int, height: int) -> list[str]:
    edges: list[float] = hist.get("edges", [])
    counts: list[int] = hist.get("counts", [])
    width = _W - _LEFT - _RIGHT
    out = [_axis_label(_LEFT, top - 8, "latency histogram (ms): share of chunks per bucket", "start")]
    out.append(f'<rect x="{_LEFT}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#ccc"/>')
    total = sum(counts)
    if not total:
        return out
    bar = width / len(counts)
    peak = max(counts) / total
    labels = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)] + [f"≥{edges[-1]:g}"]
    for i, (count, label) in enumerate(zip(counts, labels, strict=True)):
        share = count / total
        h = height * share / peak if peak else 0
        bx = _LEFT + i * bar
        out.append(
            f'<rect x="{bx + 2:.1f}" y="{top + height - h:.1f}" width="{bar - 4:.1f}" height="{h:.1f}" fill="#4c6ef5"/>'
        )
        if share:
            out.append(_axis_label(bx + bar / 2, top + height - h - 4, f"{100 * share:.1f}%", "middle", 9))
        out.append(_axis_label(bx + bar / 2, top + height + 14, label, "middle", 9))
    return out


def write_plot(result: dict[str, Any], path: str) -> None:
    if not path.endswith(".svg"):
        raise ValueError("--plot writes SVG: give a path ending in .svg")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_svg(result))
