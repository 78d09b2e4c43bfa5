"""A self-contained HTML report and a Markdown summary of a folder of run records.

``python -m distill_utils report PATH`` (and ``make run``) call ``write_report(PATH)``. For a
sweep (many runs of one notebook) it shows the headline metric over each swept parameter:
mean +- std over seeds for one, a heatmap for two. For a tutorial run (one run of each
notebook) it shows each notebook's status, wall time and headline metric, notebook 07's
final comparison table, and the lineage of every checkpoint the run wrote.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from distill_utils.common.files import atomic_write_bytes
from distill_utils.runs.experiments import RECORD, collect, read_record

__all__ = ["write_report", "swept_parameters", "summarise_sweep", "plot_sweep"]

_NOT_SWEPT = {"param.out_dir", "param.seed", "param.data_root"}
FOUR = "{:.4f}".format  # a callable: pandas 3 rejects a "%.4f" string for nullable float columns


def swept_parameters(df) -> list[str]:
    """Parameter columns (without ``param.``) whose values differ between runs, seed excluded."""
    cols = [c for c in df.columns if c.startswith("param.") and c not in _NOT_SWEPT]
    return [c[len("param."):] for c in cols if df[c].astype(str).nunique(dropna=False) > 1]


def summarise_sweep(df, metric: str):
    """Mean, std and count of ``metric.<metric>`` over seeds, per combination of swept parameters."""
    ok = df[df.status == "ok"]
    swept = [f"param.{p}" for p in swept_parameters(df)]
    column = f"metric.{metric}"
    if not swept:
        return ok[[column]].agg(["mean", "std", "count"]).T.reset_index(drop=True)
    table = ok.groupby(swept, dropna=False)[column].agg(["mean", "std", "count"]).reset_index()  # keep unset values
    return table.rename(columns={c: c[len("param."):] for c in swept})


def _figure_html(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plot_sweep(table, swept: list[str], metric: str):
    """A figure of ``summarise_sweep``'s table: a heatmap for two swept parameters, else mean +- std."""
    import matplotlib.pyplot as plt
    import numpy as np
    if len(swept) == 2:
        pivot = table.pivot(index=swept[1], columns=swept[0], values="mean")
        fig, ax = plt.subplots(figsize=(1.2 * pivot.shape[1] + 2, 0.8 * pivot.shape[0] + 1.5))
        im = ax.imshow(pivot.values, cmap="viridis")
        ax.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [str(i) for i in pivot.index])
        counts = sorted(set(int(c) for c in table["count"]))  # runs per cell: the true number of seeds
        seeds = "/".join(map(str, counts)) + (" seed" if counts == [1] else " seeds")
        ax.set(xlabel=swept[0], ylabel=swept[1], title=f"{metric}\n(mean over {seeds})")
        low, high = np.nanmin(pivot.values), np.nanmax(pivot.values)
        for (i, j), v in np.ndenumerate(pivot.values):  # dark text on the light (high) end of viridis
            light = high > low and (v - low) / (high - low) > 0.6
            ax.text(j, i, f"{v:.4f}", ha="center", va="center", color="black" if light else "white", fontsize=8)
        fig.colorbar(im, ax=ax, label=f"{metric} (mean)")
    else:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        unset = table[swept].isna()  # a parameter some runs never set (e.g. a pruned model's width): "-"
        x = table[swept].astype(str).mask(unset, "-").agg(", ".join, axis=1) if swept else ["all runs"]
        ax.errorbar(range(len(table)), table["mean"], yerr=table["std"].fillna(0), fmt="o-", capsize=4)
        ax.set_xticks(range(len(table)), list(x), rotation=20 if len(swept) > 1 else 0)
        counts = sorted(set(int(c) for c in table["count"]))
        ax.set(xlabel=", ".join(swept), ylabel=metric,
               title=f"{metric}: mean +- std over {'/'.join(map(str, counts))} seed{'s' * (counts != [1])}")
        ax.grid(alpha=0.3)
    return fig


def _md_table(df) -> str:
    cols = list(df.columns)
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _lineages(root: Path) -> list[str]:
    from distill_utils.provenance.lineage import format_lineage, lineage_chain
    from distill_utils.provenance.signing import SigningKeyError
    texts = []
    for file in sorted(root.rglob(f"*{RECORD}")):
        written = ((read_record(file) or {}).get("checkpoints") or {}).get("written", [])
        for entry in written if isinstance(written, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str) and Path(entry["path"]).is_file():
                try:
                    texts.append(format_lineage(lineage_chain(entry["path"])))
                except SigningKeyError as err:  # the report still shows everything else
                    return [f"lineage not checked: {err}"]
    return texts


def final_rows(final) -> list:
    """Notebook 07's final table from its record (a JSON list of rows), or [] if absent or malformed."""
    if not len(final) or "metric.final_table" not in final or final["metric.final_table"].dropna().empty:
        return []
    try:
        rows = json.loads(final["metric.final_table"].dropna().iloc[0])
    except (TypeError, ValueError):
        return []
    return rows if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else []


def write_report(path, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``path``; return their paths."""
    import pandas as pd
    root = Path(path)
    df = collect(root)
    if df.empty:
        raise FileNotFoundError(f"no run records (*.record.json) under {root}; run notebooks with "
                                "`python -m distill_utils run` or `sweep` first")
    title = title or f"distill-lab report: {root.name}"
    html_parts, md = [f"<h1>{html.escape(title)}</h1>"], [f"# {title}", ""]
    counts = df.status.value_counts().to_dict()
    line = f"{len(df)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    html_parts.append(f"<p>{line}</p>"), md.extend([line, ""])

    failed = df[df.status != "ok"][["run", "notebook", "status", "error"]]
    if len(failed):
        html_parts += ["<h2>Runs not finished</h2>", failed.to_html(index=False)]
        md += ["## Runs not finished", "", _md_table(failed), ""]

    for notebook, group in df.groupby("notebook", sort=True):
        ok = group[group.status == "ok"]
        metric = next((m for m in ok.main_metric.dropna()), None)
        if len(group) > 1 and metric and f"metric.{metric}" in group:
            swept = swept_parameters(group)
            table = summarise_sweep(group, metric)
            html_parts += [f"<h2>Sweep of {notebook}: {metric}</h2>", table.to_html(index=False, float_format=FOUR)]
            md += [f"## Sweep of {notebook}: {metric}", "", _md_table(table), ""]
            if len(table) > 1:
                html_parts.append(_figure_html(plot_sweep(table, swept, metric)))

    if df.notebook.nunique() > 1 or len(df) == 1:
        cols = ["notebook", "status", "wall_s", "main_metric"]
        overview = df[cols].copy()
        overview["value"] = [row.get(f"metric.{row['main_metric']}") if isinstance(row["main_metric"], str) else None
                             for _, row in df.iterrows()]
        html_parts += ["<h2>Notebooks</h2>", overview.to_html(index=False)]
        md += ["## Notebooks", "", _md_table(overview), ""]
    final = df[df.notebook == "07_prune_and_distill"]
    rows = final_rows(final)
    if rows:
        table = pd.DataFrame(rows)
        html_parts += ["<h2>Final comparison</h2>", table.to_html(index=False, float_format=FOUR)]
        md += ["## Final comparison", "", _md_table(table), ""]

    if len(df) == df.notebook.nunique():  # a tutorial run, not a sweep: where each saved model came from
        texts = _lineages(root)
        if texts:
            html_parts.append("<h2>Lineage of the saved models</h2>")
            html_parts += [f"<pre>{html.escape(t)}</pre>" for t in texts]
            md += ["## Lineage of the saved models", ""] + [f"```\n{t}\n```\n" for t in texts]

    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    html_path, md_path = root / "report.html", root / "report.md"
    atomic_write_bytes(html_path, (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                                   f"<style>{style}</style>\n" + "\n".join(html_parts)).encode())
    atomic_write_bytes(md_path, "\n".join(md).encode())
    return html_path, md_path
