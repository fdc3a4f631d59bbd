"""Analysis results: JSON, safetensors, PNG figures and an offline HTML page.

A :class:`Result` is four plain containers plus presentation:

* ``config``: the validated config (JSON-safe dict),
* ``meta``: JSON-safe facts about the run (model, number of images, image names, ...),
* ``tensors``: named tensors (stored as safetensors),
* ``tables``: named :class:`Table` objects (ranked rows for humans and JSON).

Subclasses add accessors and override :meth:`Result.figures` / :meth:`Result.plot`; since all
state lives in those containers, ``SubClass.load(dir)`` restores any saved result.

``result.save(dir)`` writes ``result.json``, ``tensors.safetensors``, one PNG per figure and a
self-contained ``index.html`` (PNGs inlined as base64, every label HTML-escaped, no scripts,
no network). Every file is written to a temporary file and moved into place with
``os.replace``, so an interrupted save never leaves a half-written file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

from .serialize import atomic_write_bytes, jsonable

__all__ = [
    "Result",
    "Table",
    "jsonable",
    "load_result",
    "figure_to_png",
    "new_figure",
    "safe_filename",
    "RESULT_JSON",
    "TENSORS_FILE",
    "HTML_FILE",
]

RESULT_JSON = "result.json"
TENSORS_FILE = "tensors.safetensors"
HTML_FILE = "index.html"
FORMAT_VERSION = 1


@dataclass
class Table:
    """A table with named columns; cells are JSON-safe scalars or short lists."""

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": jsonable(self.rows)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Table":
        return cls(columns=list(d["columns"]), rows=[list(r) for r in d.get("rows", [])], title=d.get("title", ""))

    def records(self) -> list[dict[str, Any]]:
        """Rows as ``{column: value}`` dicts."""
        return [dict(zip(self.columns, r)) for r in self.rows]

    def column(self, name: str) -> list[Any]:
        j = self.columns.index(name)
        return [r[j] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


def figure_to_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (Agg renderer; no pyplot state involved)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def new_figure(width: float = 8.0, height: float = 4.0) -> Any:
    """A matplotlib ``Figure`` not registered with pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;background:#fff;
max-width:1200px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f3f3f3} tr:nth-child(even) td{background:#fafafa} figure{margin:1em 0} img{max-width:100%}
.summary{color:#555} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.vl-result{font-family:system-ui,sans-serif}
"""


def _esc(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif value is None:
        text = ""
    elif isinstance(value, (list, tuple)):
        text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    else:
        text = str(value)
    return html.escape(text, quote=True)


class Result:
    """Base class of analysis results (see the module docstring)."""

    def __init__(
        self,
        analysis: str = "",
        *,
        summary: str = "",
        config: Optional[Mapping[str, Any]] = None,
        meta: Optional[Mapping[str, Any]] = None,
        tensors: Optional[Mapping[str, Tensor]] = None,
        tables: Optional[Mapping[str, Table]] = None,
    ) -> None:
        self.analysis = analysis
        self.summary = summary
        self.config: dict[str, Any] = jsonable(dict(config or {}))
        self.meta: dict[str, Any] = jsonable(dict(meta or {}))
        self.tensors: dict[str, Tensor] = {k: v.detach().cpu() for k, v in (tensors or {}).items()}
        self.tables: dict[str, Table] = dict(tables or {})

    # ------------------------------------------------------------------ data
    def to_dict(self) -> dict[str, Any]:
        """Everything except tensor data, JSON-safe (tensors are listed by shape and dtype)."""
        return {
            "format": "visionlens-result",
            "version": FORMAT_VERSION,
            "analysis": self.analysis,
            "result_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "summary": self.summary,
            "config": jsonable(self.config),
            "meta": jsonable(self.meta),
            "tables": {name: t.to_dict() for name, t in self.tables.items()},
            "tensors": {
                name: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "file": TENSORS_FILE}
                for name, t in self.tensors.items()
            },
        }

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], tensors: Optional[Mapping[str, Tensor]] = None) -> "Result":
        """Rebuild from :meth:`to_dict` output (and the tensors saved next to it)."""
        if d.get("format") != "visionlens-result":
            raise ValueError("Expected a visionlens result dict (format 'visionlens-result')")
        return cls(
            d.get("analysis", ""),
            summary=d.get("summary", ""),
            config=d.get("config"),
            meta=d.get("meta"),
            tensors=tensors,
            tables={k: Table.from_dict(v) for k, v in d.get("tables", {}).items()},
        )

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "Result":
        """Load a result saved with :meth:`save` (as ``cls``; use :func:`load_result` to pick the class)."""
        directory = Path(directory)
        d = json.loads((directory / RESULT_JSON).read_text(encoding="utf-8"))
        tensors: dict[str, Tensor] = {}
        if (directory / TENSORS_FILE).exists():
            from safetensors.torch import load_file

            tensors = load_file(str(directory / TENSORS_FILE))
        return cls.from_dict(d, tensors)

    # ------------------------------------------------------------------ presentation
    def figures(self) -> dict[str, Any]:
        """Named matplotlib figures saved as PNG and shown in the HTML page."""
        return {"overview": self.plot()}

    def plot(self) -> Any:
        """The main figure (a matplotlib ``Figure``). The base class plots each tensor's value histogram."""
        names = [n for n, t in self.tensors.items() if t.is_floating_point() and t.numel() > 0][:6]
        fig = new_figure(4 * max(1, min(3, len(names))), 3 * max(1, math.ceil(len(names) / 3)))
        if not names:
            ax = fig.add_subplot(1, 1, 1)
            ax.text(0.5, 0.5, f"{self.analysis}: no tensors", ha="center", va="center")
            ax.set_axis_off()
            return fig
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        for j, name in enumerate(names):
            ax = fig.add_subplot(rows, cols, j + 1)
            vals = self.tensors[name].float().flatten()
            vals = vals[torch.isfinite(vals)]
            ax.hist(vals.numpy(), bins=40, color="#4c72b0")
            ax.set_title(name, fontsize=8)
        return fig

    def title(self) -> str:
        model = self.meta.get("model")
        return f"{self.analysis} on {model}" if model else self.analysis

    def _html_body(self, pngs: Mapping[str, bytes], max_rows: int = 500) -> str:
        parts = [f"<h1>{_esc(self.title())}</h1>"]
        if self.summary:
            parts.append(f'<p class="summary">{_esc(self.summary)}</p>')
        for name, png in pngs.items():
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{_esc(name)}</figcaption></figure>"
            )
        for name, table in self.tables.items():
            parts.append(f"<h2>{_esc(table.title or name)}</h2>")
            parts.append(self._table_html(table, max_rows))
        if self.config:
            parts.append(
                "<h2>Configuration</h2><table>"
                + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in self.config.items())
                + "</table>"
            )
        if self.meta:
            parts.append("<h2>Run</h2><pre>" + html.escape(json.dumps(self._meta_for_html(), indent=1)) + "</pre>")
        return "\n".join(parts)

    def _meta_for_html(self) -> dict[str, Any]:
        out = {}
        for k, v in self.meta.items():
            if isinstance(v, list) and len(v) > 50:
                v = v[:50] + [f"... {len(v) - 50} more"]
            out[k] = v
        return out

    @staticmethod
    def _table_html(table: Table, max_rows: int) -> str:
        head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in table.columns) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in table.rows[:max_rows])
        more = f"<p>{len(table.rows) - max_rows} more rows in {RESULT_JSON}.</p>" if len(table.rows) > max_rows else ""
        return f"<table>{head}{body}</table>{more}"

    def to_html(self, pngs: Optional[Mapping[str, bytes]] = None) -> str:
        """A complete, self-contained HTML document (inline PNGs, no scripts, no network)."""
        if pngs is None:
            pngs = self._render_pngs()
        csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f"<title>{_esc(self.title())}</title><style>{_CSS}</style></head><body>\n"
            f"{self._html_body(pngs)}\n</body></html>\n"
        )

    def _repr_html_(self) -> str:
        return f'<div class="vl-result">{self._html_body(self._render_pngs(), max_rows=30)}</div>'

    def _render_pngs(self) -> dict[str, bytes]:
        out = {}
        for name, fig in self.figures().items():
            out[name] = figure_to_png(fig)
        return out

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Write JSON, safetensors, one PNG per figure and ``index.html`` into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.tensors:
            from safetensors.torch import save

            data = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
            atomic_write_bytes(directory / TENSORS_FILE, save(data, metadata={"analysis": self.analysis}))
        pngs = self._render_pngs()
        for name, png in pngs.items():
            atomic_write_bytes(directory / f"{safe_filename(name)}.png", png)
        atomic_write_bytes(directory / HTML_FILE, self.to_html(pngs).encode("utf-8"))
        atomic_write_bytes(directory / RESULT_JSON, self.to_json().encode("utf-8"))  # last: marks a complete save
        return directory

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.analysis!r}: {len(self.tensors)} tensors, tables {list(self.tables)}>"


def safe_filename(name: str) -> str:
    """``name`` with every character that is unsafe in a file name replaced by ``_``."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return keep or "figure"


def load_result(directory: Union[str, os.PathLike]) -> Result:
    """Load a saved result with its own class (else the base :class:`Result`).

    The class named in ``result.json`` is used only when its module is already imported or part of
    visionlens; a saved file never makes visionlens import other code.
    """
    import importlib
    import sys

    d = json.loads((Path(directory) / RESULT_JSON).read_text(encoding="utf-8"))
    cls: type[Result] = Result
    module, _, qual = d.get("result_class", "").rpartition(".")
    if module and (module in sys.modules or module.split(".")[0] == "visionlens"):
        try:
            cand = getattr(importlib.import_module(module), qual)
            if isinstance(cand, type) and issubclass(cand, Result):
                cls = cand
        except Exception:
            cls = Result
    return cls.load(directory)
