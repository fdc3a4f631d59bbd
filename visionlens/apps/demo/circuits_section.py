"""The demo report's circuits section: the zoo curve model read through the circuits plugins.

:func:`circuits_section` (``out`` directory -> ``(html_fragment, png_paths)``, about 5-10 s on one core):

* ``tuning_curves`` on ``mixed3a`` (run here) -- radial orientation tuning of its most selective units and
  how many pass the curve-detector test;
* ``equivariance`` on ``mixed3a`` (run here) -- the rotation family found from stimuli, tuning curves
  aligned by their offsets;
* ``circuit_surgery`` and ``phase_changes`` -- too slow for the demo (minutes), so their saved results are
  loaded from ``benchmarks/results/circuits`` (written by ``python benchmarks/circuits_curve.py``) when
  present, with that command in the caption; otherwise the section says how to produce them.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from ...plugins.circuits import equivariance
from ...results import figure_to_png, load_result
from ...zoo import catalog

__all__ = ["circuits_section"]

HOOK = "mixed3a.hook_out"
RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "circuits"
COMMAND = "python benchmarks/circuits_curve.py --out benchmarks/results/circuits"


def _png(fig: Any, out: Path, name: str) -> Path:
    path = out / f"circuits_{name}.png"
    path.write_bytes(figure_to_png(fig))
    return path


def _figure(path: Path, caption: str) -> str:
    import base64

    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def circuits_section(out: Path, results_dir: Optional[Path] = None) -> tuple[str, list[Path]]:
    """Run the circuits plugins on ``zoo:curve``; returns the HTML fragment and the PNGs written into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = catalog.load("curve")
    parts = ["<h2>Circuits: curve detectors in the zoo curve model</h2>"]
    pngs: list[Path] = []

    tun = model.analyze("tuning_curves", None, hook=HOOK, plot_units=8)
    pngs.append(_png(tun.plot(), out, "tuning"))
    parts.append(
        _figure(pngs[-1], f"tuning_curves on {HOOK}: {tun.summary} Red: curves at the best radius; blue: lines.")
    )

    # the equivariance analysis on the tuning just measured (the same stimuli; saves measuring them twice)
    t = tun.tuning()
    sig = equivariance.rotation_signature(t)
    fams, scores, offsets = equivariance.stimulus_families(sig, units=t.units)
    cfg = equivariance.Equivariance().make_config(hook=HOOK)
    tensors = {"stimulus_scores": scores, "stimulus_offsets": offsets, "curves": sig}
    eqv = equivariance.EquivarianceResult.build(t, fams, [], tensors, cfg, model, HOOK)
    pngs.append(_png(eqv.plot(), out, "family"))
    fams = eqv.families("stimuli")
    desc = ", ".join(f"unit {m} at {o:.0f} deg" for m, o in zip(fams[0].members, fams[0].offsets)) if fams else "none"
    parts.append(_figure(pngs[-1], f"equivariance: {eqv.summary}. Largest family: {desc}."))

    saved = Path(results_dir) if results_dir is not None else RESULTS
    for name, folder, what in (
        ("surgery", "surgery_designed", "circuit_surgery (designed curve circuit, mixed3a, fresh test set)"),
        ("phase", "phase_mixed3b", "phase_changes (mixed3b, 31 shipped checkpoints)"),
    ):
        if (saved / folder / "result.json").is_file():
            res = load_result(saved / folder)
            pngs.append(_png(res.plot(), out, name))
            parts.append(_figure(pngs[-1], f"{what}: {res.summary} (saved by {COMMAND})"))
        else:
            parts.append(f"<p>{html.escape(what)}: run {html.escape(COMMAND)} to add this figure.</p>")
    return "\n".join(parts), pngs
