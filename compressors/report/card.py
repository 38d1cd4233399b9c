"""What a person reads: the `README.md` model card and the CLI's before/after table."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from compressors.report.schema import BeforeAfter, CompressionReport, ModelMetrics

_ROWS = [
    ("perplexity", "Perplexity", "{:.3f}"),
    ("parameters", "Parameters", "{:,}"),
    ("nonzero_parameters", "Nonzero parameters", "{:,}"),
    ("size_bytes", "Size on disk (MB)", "{:.1f}"),
    ("latency_ms", "Forward latency (ms)", "{:.1f}"),
]
MB = 1e6  # one unit for sizes everywhere a person reads them: decimal megabytes


def _cell(metrics: ModelMetrics, key: str, fmt: str) -> str:
    value = getattr(metrics, key)
    if value is None:
        return "n/a"
    return fmt.format(value / MB if key == "size_bytes" else value)


def before_after_rows(metrics: BeforeAfter) -> list[tuple[str, str, str]]:
    """(label, before, after) rows shared by the model card and the CLI summary."""
    return [(label, _cell(metrics.before, key, fmt), _cell(metrics.after, key, fmt))
            for key, label, fmt in _ROWS]


def format_table(metrics: BeforeAfter) -> str:
    rows = before_after_rows(metrics)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'before':>14}  {'after':>14}"]
    lines += [f"{label:<{width}}  {b:>14}  {a:>14}" for label, b, a in rows]
    return "\n".join(lines)


def _serving(report: CompressionReport) -> str:
    """The format's own serving instructions (e.g. vLLM for compressed-tensors), if any."""
    serve = report.checkpoint.how_to_serve
    return f"## Serving\n\n{serve.replace('{path}', 'path/to/this/folder')}\n\n" if serve else ""


def _kinds(report: CompressionReport) -> str:
    """Every block weight by layer kind: what was compressed, counted from what was saved."""
    if not report.layer_kinds:
        return ""
    rows = "\n".join(f"| {kind.replace('_', ' ')} | {k.layers:,} | {k.parameters:,} | "
                     f"{k.sparsity:.2%} | {k.bits_per_weight:.2f} | {k.stored_bytes / MB:.2f} |"
                     for kind, k in report.layer_kinds.items())
    return ("## Weights by layer kind\n\n| kind | layers | parameters | sparsity | bits per "
            "weight | stored (MB) |\n| --- | --- | --- | --- | --- | --- |\n" + rows + "\n\n"
            "Inside the transformer blocks; sparsity of the published weights, bits and bytes "
            "of the saved files (codes, scales and zero points included, biases not).\n\n")


def model_card(report: CompressionReport) -> str:
    methods = [step.method for step in report.steps]
    front = {
        "base_model": report.base_model,
        "library_name": "transformers",
        "tags": ["compressors", "compressed", *methods],
    }
    table = "\n".join(f"| {label} | {b} | {a} |"
                      for label, b, a in before_after_rows(report.metrics))
    recipe = json.dumps(report.recipe, indent=2)
    sparsity = report.sparsity.total
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n"
        f"# {Path(report.base_model).name} — compressed ({' → '.join(methods)})\n\n"
        f"Produced by the `compressors` service. Checkpoint format: "
        f"`{report.checkpoint.format}`. {report.checkpoint.how_to_load}\n\n"
        + _serving(report)
        + f"## Before / after\n\n| metric | before | after |\n| --- | --- | --- |\n{table}\n\n"
        + (f"Sparsity of the pruned layers: {sparsity:.2%}.\n\n" if sparsity else "")
        + _kinds(report)
        + "Perplexity is measured on held-out text with the recipe's evaluation settings "
        "(see `compression_report.json`).\n\n"
        f"## Recipe\n\n```json\n{recipe}\n```\n"
    )
