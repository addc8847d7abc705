"""Group tables and plots from runs' ``metrics.json`` (the layout of the paper's main table).

``results`` everywhere is ``{label: metrics}`` where ``metrics`` is a run's ``metrics.json``
content (``{"test": {protocol: {group: {metric: value}, "counts": {...}}}, ...}``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmesr.errors import LlmesrError

GROUPS = ("overall", "tail_item", "head_item", "tail_user", "head_user")
GROUP_TITLES = {"overall": "overall", "tail_item": "tail item", "head_item": "head item",
                "tail_user": "tail user", "head_user": "head user"}


def _cell(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.4f}"


def _protocols(results: dict[str, dict[str, Any]]) -> list[str]:
    if not results:
        raise LlmesrError("no runs to report")
    seen: list[str] = []
    for metrics in results.values():
        for p in metrics.get("test", {}):
            if p not in seen:
                seen.append(p)
    if not seen:
        raise LlmesrError("the runs have no test metrics (metrics.json has no 'test' entry)")
    return seen


def group_table(results: dict[str, dict[str, Any]], metrics: tuple[str, str] = (
        "HR@10", "NDCG@10")) -> str:
    """A Markdown table: one row per run and protocol, one column per group (H / N)."""
    head = "| model | protocol | " + " | ".join(GROUP_TITLES[g] for g in GROUPS) + " |"
    lines = [head, "|---" * (len(GROUPS) + 2) + "|"]
    for protocol in _protocols(results):
        for label, m in results.items():
            res = m.get("test", {}).get(protocol)
            if res is None:
                continue
            cells = [" / ".join(_cell(res[g].get(k)) for k in metrics) for g in GROUPS]
            lines.append(f"| {label} | {protocol} | " + " | ".join(cells) + " |")
    counts = next(iter(results.values()))["test"][_protocols(results)[0]].get("counts", {})
    note = ", ".join(f"{GROUP_TITLES[g]} {counts[g]:,}" for g in GROUPS if g in counts)
    return "\n".join(lines) + (f"\n\ncells: {' / '.join(metrics)}; test cases: {note}"
                               if note else "")


def group_bars(results: dict[str, dict[str, Any]], path: str | Path,
               metric: str = "HR@10", title: str | None = None) -> Path:
    """A PNG of grouped bars: one panel per protocol, groups on the x axis, one bar per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = _protocols(results)
    labels = list(results)
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.8),
                             squeeze=False)
    width = 0.8 / len(labels)
    for ax, protocol in zip(axes[0], protocols):
        for j, label in enumerate(labels):
            res = results[label].get("test", {}).get(protocol)
            if res is None:
                continue
            values = [res[g].get(metric, float("nan")) for g in GROUPS]
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(GROUPS))]
            ax.bar(xs, values, width=width, label=label)
        ax.set_xticks(range(len(GROUPS)), [GROUP_TITLES[g] for g in GROUPS])
        ax.set_title(f"{protocol} ranking" if protocol == "full" else f"{protocol} (100 negatives)")
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
