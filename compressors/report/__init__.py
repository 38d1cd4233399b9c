"""The report a run writes: typed records (`schema`), charts, the model card, the files."""

from __future__ import annotations

import json
from pathlib import Path

from compressors.report.card import format_table, model_card
from compressors.report.schema import CompressionReport

REPORT_FILE = "compression_report.json"
RECIPE_FILE = "recipe.json"
CARD_FILE = "README.md"

__all__ = ["CARD_FILE", "RECIPE_FILE", "REPORT_FILE", "CompressionReport", "format_table",
           "model_card", "write_outputs"]


def write_outputs(folder: Path, report: CompressionReport) -> None:
    """The report, the recipe that can be re-submitted as is, and the model card."""
    (folder / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    (folder / RECIPE_FILE).write_text(json.dumps(report.recipe, indent=2), encoding="utf-8")
    (folder / CARD_FILE).write_text(model_card(report), encoding="utf-8")
