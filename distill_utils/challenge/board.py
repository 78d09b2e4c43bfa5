"""The leaderboard: ranking by the task's rule, as Markdown and as one self-contained HTML page.

A submission that meets every target gets a rank, ordered by the task's ``rank_by`` (then accuracy,
then bytes, then name); the others follow unranked, fewest targets missed first, each saying which it
misses. Refused files are listed with their reasons. The HTML page holds the same tables and an
inline SVG plot of accuracy against the ranked cost with the Pareto front (no file beside it).
"""
from __future__ import annotations

import html
import io
import math

from distill_utils.challenge.task import RANKS, describe

__all__ = ["rank", "markdown", "html_page"]

TARGETS = (("min_accuracy", "accuracy", ">="), ("max_bytes", "bytes", "<="), ("max_params", "params", "<="),
           ("max_latency_ms", "latency_ms", "<="))
COLUMNS = ("rank", "submission", "kind", "accuracy", "bytes on disk", "parameters", "latency (ms)", "x reference",
           "targets")


def _misses(row: dict, task) -> list[str]:
    missed = []
    for setting, column, sign in TARGETS:
        limit = getattr(task, setting)
        if limit is not None and not (row[column] >= limit if sign == ">=" else row[column] <= limit):
            shown = f"{100 * limit:.1f}%" if column == "accuracy" else f"{limit:,}"
            missed.append(f"{column} {sign} {shown}")
    return missed


def rank(rows: list[dict], task) -> list[dict]:
    """``rows`` (one per measured submission) ordered as the leaderboard shows them, each with ``rank``
    (None when it misses a target) and ``misses`` (the targets it misses)."""
    column, _, lower = RANKS[task.rank_by]
    rows = [{**r, "misses": _misses(r, task)} for r in rows]
    sign = 1 if lower else -1

    def order(r):
        return (len(r["misses"]), sign * r[column] if not r["misses"] else 0, -r["accuracy"], r["bytes"], r["name"])
    ranked = sorted(rows, key=order)
    place = 0
    for r in ranked:
        place += not r["misses"]
        r["rank"] = None if r["misses"] else place
    return ranked


def _cells(r: dict) -> list[str]:
    speedup = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
    return [str(r["rank"] or "-"), r["name"], r["kind"], f"{100 * r['accuracy']:.2f}%", f"{r['bytes']:,}",
            f"{r['params']:,}", f"{r['latency_ms']:.3f}", speedup, "met" if not r["misses"] else
            "misses " + ", ".join(r["misses"])]


def _rounds(task) -> str:
    n = task.latency_rounds
    return f"median of {n} interleaved round{'s' * (n != 1)}"


def _md(text: str) -> str:
    """A table cell from text a learner chose (a file name): no pipes, no control characters."""
    return "".join(c if c.isprintable() else "?" for c in str(text)).replace("|", "\\|")


def markdown(task, ranked: list[dict], refused: list, machine: str) -> str:
    """The leaderboard as Markdown."""
    lines = [f"# Leaderboard: {_md(task.title)}", "", f"Task: {describe(task)}.", "",
             f"Measured on {machine}; latency at batch {task.latency_batch}: {_rounds(task)}"
             + (f", x reference: speed-up over {task.reference} in the same rounds."
                                     if task.reference else "."), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_md(c) for c in _cells(r)) + " |" for r in ranked]
    if not ranked:
        lines.append("| - | (no verified submission yet) |" + " |" * (len(COLUMNS) - 2))
    if refused:
        lines += ["", f"## Refused ({len(refused)})", "", "| submission | reason |", "|---|---|"]
        lines += [f"| {_md(r.name)} | {_md(r.reason)} |" for r in refused]
    return "\n".join(lines) + "\n"


def _plot_svg(task, ranked: list[dict]) -> str:
    """Accuracy against the ranked cost (bytes when ranking by accuracy), the Pareto front dashed."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure  # no pyplot: nothing global is touched

    from distill_utils.runs.search.results import pareto_mask
    column = task.rank_by if task.rank_by != "accuracy" else "bytes"
    label = {"bytes": "bytes on disk", "params": "parameters",
             "latency_ms": f"latency at batch {task.latency_batch} (ms)"}
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    if ranked:
        costs, accs = [r[column] for r in ranked], [100 * r["accuracy"] for r in ranked]
        front = sorted((c, a) for c, a, keep in zip(costs, accs, pareto_mask(accs, costs)) if keep)
        ax.plot(*zip(*front), "--", color="tab:gray", label="Pareto front")
        for r, c, a in zip(ranked, costs, accs):
            ax.scatter(c, a, color="tab:blue" if r["rank"] else "tab:gray", zorder=3)
            ax.annotate(str(r["rank"] or r["name"]), (c, a), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log" if min(costs) > 0 and max(costs) / max(min(costs), 1e-12) > 20 else "linear")
    if task.min_accuracy:
        ax.axhline(100 * task.min_accuracy, color="tab:red", lw=0.8, ls=":", label="accuracy target")
    limit = getattr(task, f"max_{column}", None)
    if limit is not None and math.isfinite(limit):
        ax.axvline(limit, color="tab:red", lw=0.8, ls="-.", label=f"{label[column]} target")
    ax.set(xlabel=label[column], ylabel="accuracy (%)", title="blue: meets every target (label: its rank)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):  # text as text: smaller, and searchable in the page
        fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prologue: the page embeds the element


def html_page(task, ranked: list[dict], refused: list, machine: str) -> str:
    """The leaderboard as one HTML page: the tables and the plot inline, nothing fetched."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>" for r in ranked)
    refusals = "".join(f"<tr><td>{esc(r.name)}</td><td>{esc(r.reason)}</td></tr>" for r in refused)
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f3f3f3}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(task.title)}</title>"
            f"<style>{style}</style></head><body><h1>Leaderboard: {esc(task.title)}</h1>"
            f"<p>Task: {esc(describe(task))}.</p><p>Measured on {esc(machine)}; latency at batch "
            f"{task.latency_batch}: {_rounds(task)}.</p>"
            f"<table><tr>{head}</tr>{body}</table>{_plot_svg(task, ranked)}"
            + (f"<h2>Refused ({len(refused)})</h2><table><tr><th>submission</th><th>reason</th></tr>{refusals}</table>"
               if refused else "") + "</body></html>\n")
