"""``visionlens bench transfer``: every technique on every zoo family, scored against planted truth.

A :class:`Technique` turns one analysis (usually a plugin run through :func:`visionlens.registry.run`)
into a ground-truth :class:`~visionlens.zoo.scores.Score` on a zoo model. :func:`run_transfer`
loads each zoo model, asks each technique whether it supports the model (the plugin's own
``supports()`` reason is kept), scores it, recomputes the score on a randomly initialised copy
(Adebayo et al. 2018 model randomization) and writes ``results.json`` (after every row, so an
interrupted run resumes with ``resume=True``), ``results.md`` and ``index.html``.

Third-party techniques join through the ``visionlens_register_transfer_techniques`` hook.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .catalog import ZooEntry, entries, load, weights_path
from .scores import Score, sanity_check

ROW_KEYS = ("family", "model", "technique", "claim", "score", "chance", "normalized", "sanity_score",
            "sanity_chance", "sanity_normalized", "sanity_passed", "seconds", "supported", "reason")


@dataclass
class BenchContext:
    """What a technique gets besides the model: the zoo entry, the budget and a figure folder."""

    entry: ZooEntry
    quick: bool = False
    seed: int = 0
    out_dir: Optional[Path] = None
    randomized: bool = False  # True while scoring the randomized copy (sanity check)
    figures: Dict[str, str] = field(default_factory=dict)  # label -> PNG path relative to out_dir
    _cache: Dict[Any, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        """Images per localization batch (half triggered, half clean)."""
        return 8 if self.quick else 32

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """Memoise inputs shared by techniques on one model (e.g. the planted batch)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def save_figure(self, label: str, fig_or_array: Any) -> Optional[str]:
        """Save a matplotlib figure or an ``[H, W(, 3)]`` uint8/float array as PNG; returns its path."""
        if self.out_dir is None or self.randomized:
            return None
        rel = f"figures/{self.entry.name}__{label}.png"
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if hasattr(fig_or_array, "savefig"):
            import matplotlib.pyplot as plt

            fig_or_array.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig_or_array)
        else:
            from ..viz import array_to_png

            arr = np.asarray(fig_or_array)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            path.write_bytes(array_to_png(arr))
        self.figures[label] = rel
        return rel


@dataclass
class Technique:
    """One row of the transfer table's technique axis.

    ``plugin`` names the analysis it runs: its ``supports(model)`` decides support first (and its
    reason is reported); ``kinds`` restricts the zoo model kinds (classifier, clip, diffusion) it is
    meaningful on; ``scorer(model, ctx) -> Score`` does the work.
    """

    name: str
    claim: str
    description: str
    scorer: Callable[[Any, BenchContext], Score]
    plugin: Optional[str] = None
    kinds: Tuple[str, ...] = ("classifier", "clip")
    extra_supports: Optional[Callable[[Any, ZooEntry], Tuple[bool, str]]] = None

    def supports(self, model: Any, entry: ZooEntry) -> Tuple[bool, str]:
        if entry.kind not in self.kinds:
            return False, f"needs a {' or '.join(self.kinds)} model (no planted truth for a {entry.kind} model)"
        if self.plugin is not None:
            from ..registry import get_analysis

            ok, reason = get_analysis(self.plugin).supports(model)
            if not ok:
                return False, f"{self.plugin}: {reason}"
        if self.extra_supports is not None:
            return self.extra_supports(model, entry)
        return True, ""

    def score(self, model: Any, ctx: BenchContext) -> Score:
        return self.scorer(model, ctx)


def builtin_techniques() -> List[Any]:
    """The built-in techniques, in table order."""
    from . import techniques_circuits, techniques_features, techniques_localization

    out: List[Any] = []
    for mod in (techniques_localization, techniques_features, techniques_circuits):
        out.extend(mod.TECHNIQUES)
    return out


def all_techniques() -> List[Any]:
    """Built-in techniques plus those contributed by installed plugins (names are unique; built-ins win)."""
    from ..registry import _record, collect_transfer_techniques

    out = builtin_techniques()
    names = {t.name for t in out}
    for plugin_name, tech in collect_transfer_techniques():
        if tech.name in names:
            _record(plugin_name, f"transfer technique {tech.name!r} is already defined")
            continue
        names.add(tech.name)
        out.append(tech)
    return out


def _select(items: Iterable[Any], wanted: Optional[Sequence[str]], key: Callable[[Any], Sequence[str]],
            what: str) -> List[Any]:
    items = list(items)
    if not wanted:
        return items
    known = {k for it in items for k in key(it)}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        from ..validation import VisionLensError

        raise VisionLensError(f"Unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}.")
    return [it for it in items if any(k in wanted for k in key(it))]


def _row(entry: ZooEntry, tech: Any, **kw: Any) -> Dict[str, Any]:
    row = {k: None for k in ROW_KEYS}
    row.update(family=entry.family, model=f"zoo:{entry.name}", technique=tech.name,
               claim=getattr(tech, "claim", ""), supported=False, reason="")
    row.update(kw)
    return row


def _score_fields(prefix: str, s: Score) -> Dict[str, Any]:
    return {f"{prefix}score": float(s.score), f"{prefix}chance": float(s.chance), f"{prefix}normalized": s.normalized}


def _load_results(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["rows"])
    except (ValueError, KeyError, TypeError):
        return []


def run_transfer(out_dir: Union[str, Path], families: Optional[Sequence[str]] = None,
                 techniques: Optional[Sequence[str]] = None, quick: bool = False, seed: int = 0,
                 resume: bool = True, sanity: bool = True, verbose: bool = False) -> List[Dict[str, Any]]:
    """Run the benchmark; writes ``results.json`` / ``results.md`` / ``index.html`` into ``out_dir``.

    ``families`` filters zoo models by family or name; ``techniques`` by technique name or claim.
    With ``resume`` (default), rows already in ``out_dir/results.json`` for the same settings are kept.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    zoo = _select([e for e in entries().values() if e.benchmark], families, lambda e: (e.family, e.name), "family")
    techs = _select(all_techniques(), techniques, lambda t: (t.name, getattr(t, "claim", "")), "technique")
    settings = {"quick": quick, "seed": seed, "sanity": sanity}
    res_path = out / "results.json"
    old = _load_results(res_path) if resume else []
    if old and json.loads(res_path.read_text()).get("settings") != settings:
        old = []
    done = {(r["model"], r["technique"]): r for r in old}
    rows: List[Dict[str, Any]] = []

    def flush() -> None:
        payload = {"settings": settings, "command": _command(families, techniques, quick, seed), "rows": rows}
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
        tmp.replace(res_path)

    for entry in zoo:
        todo = [t for t in techs if (f"zoo:{entry.name}", t.name) not in done]
        kept = [done[(f"zoo:{entry.name}", t.name)] for t in techs if (f"zoo:{entry.name}", t.name) in done]
        rows.extend(kept)
        if not todo:
            continue
        reason = entry.requires() or (None if weights_path(entry.name).is_file()
                                      else f"no trained weights (run `visionlens zoo train {entry.name}`)")
        if reason:
            rows.extend(_row(entry, t, reason=reason) for t in todo)
            flush()
            continue
        model = load(entry.name)
        random_model = load(entry.name, pretrained=False) if sanity else None
        ctx = BenchContext(entry=entry, quick=quick, seed=seed, out_dir=out)
        for tech in todo:
            ok, why = tech.supports(model, entry)
            if not ok:
                rows.append(_row(entry, tech, reason=why))
                flush()
                continue
            if verbose:
                print(f"  {entry.name:>14s} x {tech.name:<24s}", end="", flush=True)
            ctx.figures = {}
            t0 = time.perf_counter()
            try:
                torch.manual_seed(seed)
                s = tech.score(model, ctx)
                row = _row(entry, tech, supported=True, **_score_fields("", s), details=s.to_dict()["details"])
                if random_model is not None:
                    rctx = BenchContext(entry=entry, quick=quick, seed=seed, out_dir=out, randomized=True)
                    torch.manual_seed(seed)
                    rs = tech.score(random_model, rctx)
                    chk = sanity_check(s, rs)
                    row.update(_score_fields("sanity_", rs), sanity_passed=chk["passed"])
                row["figures"] = dict(ctx.figures)
            except Exception as exc:  # a technique that crashes is a row with its error, not a dead run
                row = _row(entry, tech, supported=True, reason=f"error: {type(exc).__name__}: {exc}",
                           error=traceback.format_exc(limit=4))
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if verbose:
                print(f" {row['score'] if row['score'] is None else round(row['score'], 3)}  ({row['seconds']} s)")
            rows.append(row)
            flush()
        del model, random_model
    order_m = {f"zoo:{e.name}": i for i, e in enumerate(zoo)}
    order_t = {t.name: i for i, t in enumerate(techs)}
    rows.sort(key=lambda r: (order_m.get(r["model"], 1 << 20), order_t.get(r["technique"], 1 << 20)))
    flush()
    from .bench_report import write_report

    write_report(out, rows, settings, _command(families, techniques, quick, seed))
    return rows


def _command(families: Optional[Sequence[str]], techniques: Optional[Sequence[str]], quick: bool, seed: int) -> str:
    cmd = "visionlens bench transfer"
    if families:
        cmd += " --families " + ",".join(families)
    if techniques:
        cmd += " --techniques " + ",".join(techniques)
    if quick:
        cmd += " --quick"
    if seed:
        cmd += f" --seed {seed}"
    return cmd + " --out DIR"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
