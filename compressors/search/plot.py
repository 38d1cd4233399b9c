"""The Pareto plot of a search as a standalone SVG (no plotting library needed).

x: stored size in MB; y: perplexity as a ratio to the dense model. Lines: each family's
predicted front; hollow circles: a verified candidate's prediction, joined to its measured
value (filled); the chosen recipe's full-budget measurement is the large ring; dashed lines
are the goal's limits.
"""

from __future__ import annotations

import math
from html import escape

from compressors.report.search import SearchSection

PARETO_FILE = "pareto.svg"
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 440, 70, 200, 30, 50
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
RECOVERED = "#bcbd22"  # measured points of candidates the search retrained (PERP)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = max(high - low, 1e-9)
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def pareto_svg(section: SearchSection) -> str:
    """The SVG text for a search (`compression_report.json`'s `search` section)."""
    candidates = section.candidates
    points = [(b, r) for front in section.fronts.values() for b, r in front]
    for c in candidates:
        for value in (c.predicted, c.measured, c.final):
            if value is not None and value.size_bytes and value.perplexity_ratio:
                points.append((value.size_bytes, value.perplexity_ratio))
    limit_ratio = section.goal.get("max_perplexity_ratio")
    limit_size = section.size_limit_bytes
    xs = [p[0] / 1e6 for p in points] + ([limit_size / 1e6] if limit_size else [])
    ys = [p[1] for p in points] + ([limit_ratio] if limit_ratio else [])
    x0, x1 = min(xs) * 0.97, max(xs) * 1.03
    y_cap = max(limit_ratio * 1.5 if limit_ratio else 0, min(max(ys), 3.0), 1.05)
    y0, y1 = min(min(ys), 1.0) * 0.995, y_cap

    def sx(mb: float) -> float:
        return LEFT + (mb - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def sy(ratio: float) -> float:
        return TOP + (y1 - min(ratio, y1)) / (y1 - y0) * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
           '<title>Search: size against perplexity</title>',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" y1="{H - BOTTOM}" x2="{sx(t):.1f}" y2="{TOP}" '
                   'stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{H - BOTTOM + 15}" text-anchor="middle">'
                   f'{t:g}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{W - RIGHT}" y2="{sy(t):.1f}" '
                   'stroke="#eee"/>'
                   f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">'
               'stored size (MB)</text>'
               f'<text x="16" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(TOP + H - BOTTOM) / 2})">perplexity / dense</text>')
    if limit_ratio:
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(limit_ratio):.1f}" '
                   f'y2="{sy(limit_ratio):.1f}" stroke="#d62728" stroke-dasharray="5,4"/>')
    if limit_size:
        out.append(f'<line x1="{sx(limit_size / 1e6):.1f}" x2="{sx(limit_size / 1e6):.1f}" '
                   f'y1="{TOP}" y2="{H - BOTTOM}" stroke="#d62728" stroke-dasharray="5,4"/>')
    legend = []
    for index, (name, front) in enumerate(sorted(section.fronts.items())):
        color = COLORS[index % len(COLORS)]
        path = " ".join(f"{sx(b / 1e6):.1f},{sy(r):.1f}" for b, r in sorted(front))
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"'
                   f'><title>predicted {escape(name)}</title></polyline>')
        legend.append((color, f"predicted {name}", "line"))
    for index, c in enumerate(candidates):
        pred, meas, final = c.predicted, c.measured, c.final
        if not meas.perplexity_ratio or meas.size_bytes is None:
            continue
        px, py = sx(pred.size_bytes / 1e6), sy(pred.perplexity_ratio)
        mx, my = sx(meas.size_bytes / 1e6), sy(meas.perplexity_ratio)
        recovered = c.recovered
        family = f"{c.family} + PERP" if recovered else c.family
        label = (f"candidate {index + 1} ({escape(family)}): predicted "
                 f"{pred.perplexity_ratio:.4f}, measured {meas.perplexity_ratio:.4f}, "
                 f"{meas.size_bytes / 1e6:.1f} MB")
        out.append(f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{mx:.1f}" y2="{my:.1f}" '
                   'stroke="#555" stroke-dasharray="2,2"/>'
                   f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="white" stroke="#555"/>'
                   f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="4" '
                   f'fill="{RECOVERED if recovered else "#333"}"><title>{label}'
                   f'</title></circle>'
                   f'<text x="{mx + 6:.1f}" y="{my - 6:.1f}">{index + 1}</text>')
        if final is not None and final.perplexity_ratio and final.size_bytes is not None:
            out.append(f'<circle cx="{sx(final.size_bytes / 1e6):.1f}" '
                       f'cy="{sy(final.perplexity_ratio):.1f}" r="8" fill="none" '
                       f'stroke="#d62728" stroke-width="2"><title>candidate {index + 1} at the '
                       f'full evaluation: {final.perplexity_ratio:.4f}</title></circle>')
    if any(c.recovered for c in candidates):
        legend.append((RECOVERED, "measured, retrained (PERP)", "dot"))
    legend += [("#555", "predicted (hollow) -> measured", "dot"),
               ("#d62728", "full evaluation / goal limits", "ring")]
    for row, (color, text, _kind) in enumerate(legend):
        y = TOP + 14 + row * 16
        out.append(f'<rect x="{W - RIGHT + 12}" y="{y - 8}" width="10" height="10" '
                   f'fill="{color}"/><text x="{W - RIGHT + 27}" y="{y + 1}">'
                   f'{escape(text[:30])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
