"""The technique-transfer benchmark's planted-truth foundation.

* :mod:`visionlens.zoo.data` -- seeded synthetic images with known factors, masks, captions and a
  planted trigger, plus Fashion-MNIST with the same trigger;
* :mod:`visionlens.zoo.scores` -- one ground-truth scorer per kind of interpretability claim.

See ``docs/zoo.md``.
"""

from . import data, scores
from .data import (CLASS_NAMES, COLOURS, N_CLASSES, SHAPES, TARGET_CLASS, TEXTURES, PlantedBatch,
                   PlantedFashionMNIST, PlantedShapes, fashion_mnist_available, fashion_mnist_batch, label_rule,
                   make_batch, trigger_box, trigger_pattern)
from .scores import Score

__all__ = ["data", "scores", "Score", "CLASS_NAMES", "COLOURS", "N_CLASSES", "SHAPES", "TARGET_CLASS", "TEXTURES",
           "PlantedBatch", "PlantedFashionMNIST", "PlantedShapes", "fashion_mnist_available", "fashion_mnist_batch",
           "label_rule", "make_batch", "trigger_box", "trigger_pattern"]
