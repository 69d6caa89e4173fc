"""The one self-contained HTML report: a data-label banner, then one section per experiment.

Self-contained: figures are embedded as base64 PNG ``data:`` URIs and the style sheet is inline, so
the file can be mailed, attached to an MLflow run or opened from a KFP UI without its folder.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from tcnet.report.figures import FigureOut
from tcnet.report.tables import DisplayTable

CSS = """
body{font-family:system-ui,sans-serif;margin:0 2em 3em;color:#222;max-width:1400px}
.banner{position:sticky;top:0;background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;
 margin:0 -1em 1em;font-weight:600}
.banner.real{background:#e7f4e4;border-color:#8bc48a}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
caption{caption-side:top;text-align:left;font-size:.9em;color:#444;padding:.3em 0;max-width:1100px}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th:first-child,td:first-child,td:last-child{text-align:left}
th{background:#f3f3f3}
figure{display:inline-block;margin:.5em 1em .5em 0}
figcaption{font-size:.85em;color:#444}
img{max-width:100%}
section{border-top:2px solid #ddd;margin-top:2em}
.meta{color:#555}
.missing{color:#a33}
"""


@dataclass
class Section:
    exp_id: str
    title: str
    reproduces: str
    meta: str  # one line: data, aggregation, folds
    tables: list[tuple[str, DisplayTable]] = field(default_factory=list)  # (heading, table)
    figures: list[FigureOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # run ids without evaluation outputs


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def is_real(data_label: str) -> bool:
    return data_label.strip().lower() == "real"


def banner_text(data_label: str) -> str:
    if is_real(data_label):
        return f"Data: {data_label}."
    return (
        f"Data: {data_label}. These numbers are NOT from the paper's datasets and must not be read "
        "as a reproduction of its values."
    )


def render(sections: list[Section], data_label: str, heading: str, subtitle: str = "",
           datasets: DisplayTable | None = None) -> str:
    """The page; ``datasets``: the images-per-dataset table, a section of its own before the experiments."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(heading)} [{e(data_label)}]</title><style>{CSS}</style></head><body>",
        f'<div class="banner{" real" if is_real(data_label) else ""}" id="data-label">'
        f"{e(banner_text(data_label))}</div>",
        f"<h1>{e(heading)}</h1>",
    ]
    if subtitle:
        out.append(f'<p class="meta">{e(subtitle)}</p>')
    nav = ['<li><a href="#datasets">datasets</a>: images per dataset (Table 2)</li>'] if datasets is not None else []
    out.append("<nav><ul>" + "".join(nav) + "".join(
        f'<li><a href="#exp-{e(s.exp_id)}">{e(s.exp_id)}</a>: {e(s.title)} ({e(s.reproduces)})</li>' for s in sections
    ) + "</ul></nav>")
    if datasets is not None:
        out.append(f'<section id="datasets"><h2>Datasets</h2>{datasets.html()}</section>')
    for s in sections:
        out.append(f'<section id="exp-{e(s.exp_id)}"><h2>{e(s.exp_id)}: {e(s.title)}</h2>')
        out.append(f'<p class="meta">Reproduces: <b>{e(s.reproduces)}</b>. {e(s.meta)}</p>')
        if s.missing:
            out.append(
                f'<p class="missing">{len(s.missing)} run(s) have no evaluation outputs: '
                f"{e(', '.join(s.missing))}</p>"
            )
        for title, table in s.tables:
            out.append(f"<h3>{e(title)}</h3>{table.html()}")
        if s.figures:
            out.append("<h3>Figures</h3>")
            for f in s.figures:
                out.append(f"<figure>{_img(f.path, f.title)}<figcaption>{e(f.title)} "
                           f"[data: {e(data_label)}]</figcaption></figure>")
        if s.notes:
            out.append("<h3>Ours vs the paper</h3><ul>" + "".join(f"<li>{e(n)}</li>" for n in s.notes) + "</ul>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
