"""The technique-transfer benchmark's planted-truth foundation.

* :mod:`visionlens.zoo.data` -- seeded synthetic images with known factors, masks, captions and a
  planted trigger, plus Fashion-MNIST with the same trigger;
* :mod:`visionlens.zoo.scores` -- one ground-truth scorer per kind of interpretability claim;
* :mod:`visionlens.zoo.entry` / :mod:`visionlens.zoo.catalog` -- what a zoo model is, and the catalogue the
  entry modules (:mod:`~visionlens.zoo.classifiers`, :mod:`~visionlens.zoo.clip_model`,
  :mod:`~visionlens.zoo.diffusion_model`) register into; :mod:`visionlens.zoo.train` trains them;
  :mod:`visionlens.zoo.randomize` gives their random controls (model / cascading randomization);
* :mod:`visionlens.zoo.technique` / :mod:`visionlens.zoo.bench` -- what a transfer technique is, and the
  benchmark that runs every registered technique (``techniques_*``) on every zoo model;
* :mod:`visionlens.zoo.planted` -- small models with hand-set weights (the true circuit is known);
* :mod:`visionlens.zoo.plugin` -- the built-in plugin: the ``zoo:`` spec, the techniques, the
  ``zoo`` / ``bench`` commands (:mod:`visionlens.zoo.cli`).

See ``docs/zoo.md``.
"""

from . import data, scores
from .data import (
    CLASS_NAMES,
    COLOURS,
    N_CLASSES,
    SHAPES,
    TARGET_CLASS,
    TEXTURES,
    PlantedBatch,
    PlantedFashionMNIST,
    PlantedShapes,
    fashion_mnist_available,
    fashion_mnist_batch,
    label_rule,
    make_batch,
    trigger_pattern,
    trigger_patterns,
    trigger_size,
)
from .scores import Score

__all__ = [
    "data",
    "scores",
    "Score",
    "CLASS_NAMES",
    "COLOURS",
    "N_CLASSES",
    "SHAPES",
    "TARGET_CLASS",
    "TEXTURES",
    "PlantedBatch",
    "PlantedFashionMNIST",
    "PlantedShapes",
    "fashion_mnist_available",
    "fashion_mnist_batch",
    "label_rule",
    "make_batch",
    "trigger_patterns",
    "trigger_size",
    "trigger_pattern",
]
