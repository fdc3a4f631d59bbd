"""The demo report's circuits section: the zoo curve model read through the circuits plugins.

:func:`circuits_section` (``out`` directory -> ``(html_fragment, png_paths)``, about 10-15 s on one core)
runs on ``zoo:curve``:

* ``tuning_curves`` on ``mixed3a`` -- radial orientation tuning of its most selective units and how many
  pass the curve-detector test;
* ``equivariance`` on ``mixed3a`` -- the rotation family found from stimuli, tuning curves aligned by their
  offsets;
* ``circuit_surgery`` -- the curve detectors ablated, then replaced by the hand-coded template circuit
  (a quick run: 600 held-out images, no controls; ``docs/circuits.md`` has the full run);
* ``phase_changes`` -- curve-detector count, selectivity, family size and loss over every third shipped
  checkpoint, with the logistic change point.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ...results import figure_to_png
from ...zoo import catalog
from ...zoo.curve_model import CHECKPOINTS_FILE, HELD_OUT_SEED, curve_batch

__all__ = ["circuits_section"]

HOOK, BELOW = "mixed3a.hook_out", "pool2.hook_out"


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


def circuits_section(out: Path) -> tuple[str, list[Path]]:
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

    eqv = model.analyze("equivariance", None, hook=HOOK)
    pngs.append(_png(eqv.plot(), out, "family"))
    fams = eqv.families("stimuli")
    desc = ", ".join(f"unit {m} at {o:.0f} deg" for m, o in zip(fams[0].members, fams[0].offsets)) if fams else "none"
    parts.append(_figure(pngs[-1], f"equivariance: {eqv.summary}. Largest family: {desc}."))

    b = curve_batch(600, seed=HELD_OUT_SEED)
    surg = model.analyze(
        "circuit_surgery",
        b["images"],
        below=BELOW,
        hook=HOOK,
        labels=b["labels"].tolist(),
        n_bootstrap=200,
        controls=False,
    )
    pngs.append(_png(surg.plot(), out, "surgery"))
    parts.append(_figure(pngs[-1], f"circuit_surgery (quick run, 300 evaluation images): {surg.summary}."))

    ckpt = Path(catalog.WEIGHTS_DIR) / CHECKPOINTS_FILE
    if ckpt.is_file():
        pc = model.analyze(
            "phase_changes",
            b["images"][:300],
            checkpoints=str(ckpt),
            hook=HOOK,
            labels=b["labels"][:300].tolist(),
            every=3,
            n_bootstrap=0,
        )
        pngs.append(_png(pc.plot(), out, "phase"))
        parts.append(_figure(pngs[-1], f"phase_changes: {pc.summary}."))
    return "\n".join(parts), pngs
