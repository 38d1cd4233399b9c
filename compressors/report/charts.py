"""Builders for the report's generic charts (`schema.Chart`), shared by every method."""

from __future__ import annotations

from compressors.report.schema import Chart, Series

MAX_CURVE_POINTS = 200


def thinned(values: list[float], max_points: int = MAX_CURVE_POINTS) -> list[tuple[int, float]]:
    """[(step, value), ...] from 1-based steps, at most `max_points` evenly spaced, last kept."""
    if not values:
        return []
    stride = max(1, -(-len(values) // max_points))
    points = [(i + 1, round(v, 6)) for i, v in enumerate(values) if i % stride == 0]
    if points[-1][0] != len(values):
        points.append((len(values), round(values[-1], 6)))
    return points


def line_chart(chart_id: str, title: str, curves: dict[str, list[float]], y_label: str = "loss",
               x_label: str = "step", log_y: bool = True) -> Chart:
    """One line per named curve of per-step values."""
    return Chart(id=chart_id, title=title, kind="line", x_label=x_label, y_label=y_label,
                 log_y=log_y,
                 series=[Series(name=name, points=thinned(values))
                         for name, values in curves.items() if values])


def layer_chart(chart_id: str, title: str, per_layer: dict[str, float], y_label: str,
                reference: float | None = None) -> Chart:
    """One bar per layer."""
    return Chart(id=chart_id, title=title, kind="bar", x_label="layer", y_label=y_label,
                 series=[Series(name=y_label, points=list(per_layer.items()))],
                 reference=reference)
