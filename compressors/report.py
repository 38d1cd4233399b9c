"""The artifacts a person reads: `compression_report.json` and the `README.md` model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPORT_FILE = "compression_report.json"
RECIPE_FILE = "recipe.json"
CARD_FILE = "README.md"

_ROWS = [
    ("perplexity", "Perplexity", "{:.3f}"),
    ("parameters", "Parameters", "{:,}"),
    ("nonzero_parameters", "Nonzero parameters", "{:,}"),
    ("size_bytes", "Size on disk (MB)", None),
    ("latency_ms", "Forward latency (ms)", "{:.1f}"),
]


def _cell(key: str, value: Any, fmt: str | None) -> str:
    if value is None:
        return "n/a"
    if key == "size_bytes":
        return f"{value / 1e6:.1f}"
    return fmt.format(value) if fmt else str(value)


def before_after_rows(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(label, before, after) rows shared by the model card and the CLI summary."""
    before, after = metrics["before"], metrics["after"]
    return [
        (label, _cell(key, before.get(key), fmt), _cell(key, after.get(key), fmt))
        for key, label, fmt in _ROWS
    ]


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = before_after_rows(metrics)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'before':>14}  {'after':>14}"]
    lines += [f"{label:<{width}}  {b:>14}  {a:>14}" for label, b, a in rows]
    return "\n".join(lines)


def model_card(report: dict[str, Any]) -> str:
    methods = [step["method"] for step in report["steps"]]
    front = {
        "base_model": report["base_model"],
        "library_name": "transformers",
        "tags": ["compressors", "compressed", *methods],
    }
    table = "\n".join(
        f"| {label} | {b} | {a} |" for label, b, a in before_after_rows(report["metrics"])
    )
    recipe = json.dumps(report["recipe"], indent=2)
    sparsity = report.get("sparsity", {}).get("total")
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n"
        f"# {Path(str(report['base_model'])).name} — compressed ({' → '.join(methods)})\n\n"
        f"Produced by the `compressors` service. {_how_to_load(report)}\n\n"
        f"## Before / after\n\n| metric | before | after |\n| --- | --- | --- |\n{table}\n\n"
        + (f"Sparsity of the pruned layers: {sparsity:.2%}.\n\n" if sparsity else "")
        + "Perplexity is measured on held-out text with the recipe's evaluation settings "
        "(see `compression_report.json`).\n\n"
        f"## Recipe\n\n```json\n{recipe}\n```\n"
    )


def _needs_our_loader(report: dict[str, Any]) -> bool:
    """Factorized layers (unless exported dense) and LoRC corrections are not in transformers."""
    for step in report["steps"]:
        config = step.get("config", {})
        if step["method"] == "lowrank" and not config.get("export_dense"):
            return True
        if step["method"] == "quantize" and config.get("lorc_rank"):
            return True
    return False


def _how_to_load(report: dict[str, Any]) -> str:
    if _needs_our_loader(report):
        return ("Load it with `compressors.load(path)`: it holds layers or corrections that "
                "plain transformers does not know.")
    return ("Loads with `AutoModelForCausalLM.from_pretrained(path)` (`AutoModel` for encoders) "
            "or `compressors.load(path)`.")


def write_outputs(folder: Path, report: dict[str, Any]) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / RECIPE_FILE).write_text(json.dumps(report["recipe"], indent=2), encoding="utf-8")
    (folder / CARD_FILE).write_text(model_card(report), encoding="utf-8")
