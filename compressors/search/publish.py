"""Publishing the chosen candidate: its full-evaluation run's files, its report with the
`search` section and the Pareto chart, and `pareto.svg`, renamed into place atomically
(`compressors.publish`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from compressors.publish import MANIFEST_FILE, staging_folder
from compressors.report import REPORT_FILE
from compressors.report.schema import Chart, CompressionReport, Series
from compressors.report.search import SearchSection
from compressors.search.plot import PARETO_FILE, pareto_svg


def publish(folder: Path, report: CompressionReport, section: SearchSection, out: Path,
            overwrite: bool) -> CompressionReport:
    """`folder`'s files (the chosen run's checkpoint) into `out`, with `report` gaining the
    search section and its chart; returns that report."""
    report = report.model_copy(update={"search": section,
                                       "charts": [*report.charts, pareto_chart(section)]})
    with staging_folder(out, overwrite) as staging:
        for path in folder.iterdir():
            if path.name == MANIFEST_FILE:
                continue
            target = staging / path.name
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                shutil.copy2(path, target)
        (staging / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2),
                                           encoding="utf-8")
        (staging / PARETO_FILE).write_text(pareto_svg(section), encoding="utf-8")
    return report


def pareto_chart(section: SearchSection) -> Chart:
    """The same plot as `pareto.svg`, as a chart the dashboard draws for any report."""
    series = [Series(name=f"predicted {name}",
                     points=[(round(b / 1e6, 3), round(r, 5)) for b, r in points])
              for name, points in section.fronts.items()]
    plain = [c for c in section.candidates if not c.recovered]
    retrained = [c for c in section.candidates if c.recovered]
    for label, measurements in (
            ("verified (small budget)", [c.measured for c in plain]),
            ("verified, retrained (PERP)", [c.measured for c in retrained]),
            ("chosen (full)", [c.final for c in section.candidates])):
        points = [(round(m.size_bytes / 1e6, 3), round(m.perplexity_ratio, 5))
                  for m in measurements if m is not None and m.size_bytes is not None
                  and m.perplexity_ratio]
        if points:
            series.append(Series(name=label, points=sorted(points)))
    return Chart(id="search-pareto", title="Size against perplexity (search)", kind="line",
                 x_label="size MB", y_label="perplexity / dense", series=series,
                 reference=section.goal.get("max_perplexity_ratio"))
