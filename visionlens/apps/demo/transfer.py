"""Demo report section: the technique-transfer table on the quick subset (``bench transfer --quick``).

:func:`demo_transfer_section` runs :func:`visionlens.zoo.bench.run_transfer` over every shipped zoo
model (quick budgets), writes the full result under ``out_dir/transfer`` (results.json, results.md,
index.html with the figures) and returns an HTML fragment with the table and its headline.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Union

from ...zoo.bench import run_transfer
from ...zoo.bench_report import cell_text, headline, verdict_colour
from ...zoo.catalog import available, get_entry

__all__ = ["demo_transfer_section"]


def demo_transfer_section(out_dir: Union[str, Path]) -> str:
    """Run the quick transfer table and return an HTML fragment for the demo page."""
    out = Path(out_dir) / "transfer"
    names = [n for n in available() if get_entry(n).benchmark]
    if not names:
        return "<h2>Technique transfer</h2><p class='warn'>No trained zoo models in this install.</p>"
    t0 = time.perf_counter()
    rows = run_transfer(out, families=names, quick=True)
    secs = time.perf_counter() - t0
    models = list(dict.fromkeys(r["model"] for r in rows))
    techs = list(dict.fromkeys(r["technique"] for r in rows))
    by = {(r["model"], r["technique"]): r for r in rows}
    e = html.escape
    head = "".join(f"<th>{e(m.removeprefix('zoo:'))}</th>" for m in models)
    body = []
    for t in techs:
        cells = []
        for m in models:
            r = by.get((m, t))
            if r is None:
                cells.append("<td></td>")
            elif not r.get("supported") or r.get("score") is None:
                cells.append(f"<td style='background:#eee' title='{e(r.get('reason') or '')}'>{cell_text(r)}</td>")
            else:
                cells.append(f"<td style='background:{verdict_colour(r)}'>{e(cell_text(r))}</td>")
        body.append(f"<tr><td>{e(t)}</td>{''.join(cells)}</tr>")
    lines = "".join(
        f"<li><code>{e(t)}</code>: " + "; ".join(f"<b>{e(v)}</b> {e(', '.join(f))}" for v, f in d.items()) + "</li>"
        for t, d in headline(rows).items()
    )
    return (
        f"<h2>Technique transfer (quick subset)</h2><p>Every technique on every zoo family, scored against the "
        f"planted truth (0 = chance, 1 = truth recovered; ⚠ = the score did not drop on random weights; "
        f"— = not supported). {len(rows)} cells in {secs:.0f} s; "
        f"<a href='transfer/index.html'>full table with figures</a>.</p>"
        f"<table><tr><th>technique</th>{head}</tr>{''.join(body)}</table><ul>{lines}</ul>"
    )
