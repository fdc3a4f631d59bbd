"""What a technique of the transfer benchmark is: :class:`Technique` and the :class:`BenchContext` it scores in.

Shared by the benchmark (:mod:`visionlens.zoo.bench`, which runs every technique on every zoo model)
and the modules that define techniques (:mod:`~visionlens.zoo.techniques_localization`,
:mod:`~visionlens.zoo.techniques_features`, :mod:`~visionlens.zoo.techniques_circuits`, and
third-party plugins through ``visionlens_register_transfer_techniques``), so neither side imports the other.

A technique is any object with ``name``, ``claim``, ``supports(model, entry) -> (bool, reason)`` and
``score(model, ctx: BenchContext) -> Score``; :class:`Technique` is the built-in implementation that
wraps one analysis plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..registry import get_analysis
from ..viz import array_to_png
from .entry import ZooEntry
from .scores import Score

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


LOCALIZATION_IMAGES = {"quick": 6, "full": 320}  # images per localization batch (4/5 triggered and scored, 1/5 clean)
CONTROL_IMAGES = 80  # localization images for the randomized copies (sanity check, cascade) in the full table
LOCALIZATION_SCORED_FRACTION = 0.8  # the scored part: triggered images (CLIP: two-object images); the rest clean


@dataclass
class BenchContext:
    """What a technique gets besides the model: the zoo entry, the budget and a figure folder."""

    entry: ZooEntry
    quick: bool = False
    seed: int = 0
    out_dir: Optional[Path] = None
    randomized: bool = False  # True while scoring the randomized copy (sanity check)
    localization_images: Optional[int] = None  # overrides :data:`LOCALIZATION_IMAGES` (e.g. the baseline fit batch)
    figures: Dict[str, str] = field(default_factory=dict)  # label -> PNG path relative to out_dir
    _cache: Dict[Any, Any] = field(default_factory=dict)
    # inputs that do not depend on the weights (planted batches), shared by every context of one zoo model:
    # the trained one, the randomized copy's and the cascade steps' (the bench passes one dict to all of them)
    inputs: Dict[Any, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        """Images per localization batch (:data:`LOCALIZATION_SCORED_FRACTION` triggered, the rest clean)."""
        if self.localization_images is not None:
            return int(self.localization_images)
        return LOCALIZATION_IMAGES["quick" if self.quick else "full"]

    @property
    def n_scored_images(self) -> int:
        """Images of the localization batch that carry the scored truth (triggered; CLIP: two objects)."""
        return int(self.n_images * LOCALIZATION_SCORED_FRACTION)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """Memoise what techniques on this one model share (e.g. a hook chosen on it, its activations)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def cached_input(self, key: Any, make: Callable[[], Any]) -> Any:
        """Memoise an input that does not depend on the weights (a planted batch, keyed by its size and seed) in
        :attr:`inputs`, which the bench shares between the trained model's context and the randomized copies'
        (sanity check, cascade steps): each batch is generated once per zoo model. Never for anything computed
        with the model (a freed model's ``id`` can be reused by the next cascade copy)."""
        key = ("input", self.entry.name, key)
        if key not in self.inputs:
            self.inputs[key] = make()
        return self.inputs[key]

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
    scorer: Callable[[HookedVisionModel, BenchContext], Score]
    plugin: Optional[str] = None
    kinds: Tuple[str, ...] = ("classifier", "clip")
    extra_supports: Optional[Callable[[HookedVisionModel, ZooEntry], Tuple[bool, str]]] = None
    # cascading-randomization steps in the full table (None: the bench's default; 0: no cascade, for a technique
    # that does not read the column model's weights, whose curve over them would be a flat copy of its control)
    cascade_steps: Optional[int] = None
    # the one hook whose activations alone decide the score (nothing after it is read), if there is one: the
    # cascade then reuses the trained score where randomizing leaves that hook unchanged (zoo.cascade)
    score_reads: Optional[Callable[[HookedVisionModel, ZooEntry], str]] = None

    def supports(self, model: HookedVisionModel, entry: ZooEntry) -> Tuple[bool, str]:
        """The technique's kinds, then its plugin's ``supports(model)``, then ``extra_supports``."""
        if entry.kind not in self.kinds:
            return False, f"needs a {' or '.join(self.kinds)} model (no planted truth for a {entry.kind} model)"
        if self.plugin is not None:
            ok, reason = get_analysis(self.plugin).supports(model)
            if not ok:
                return False, f"{self.plugin}: {reason}"
        if self.extra_supports is not None:
            return self.extra_supports(model, entry)
        return True, ""

    def score(self, model: HookedVisionModel, ctx: BenchContext) -> Score:
        """The technique's ground-truth score of ``model`` (``scorer(model, ctx)``)."""
        return self.scorer(model, ctx)
