"""Sparse dictionaries (SAEs, NMF) on any hook of any family, through the hooks.

``overcomplete`` provides the models, losses, training loops and metrics; this package is the glue:
:mod:`.source` (activation vectors from any hook), :mod:`.dictionary` (the model, its scaling and card),
:mod:`.train` (``train_dictionary``), :mod:`.splice` (dictionaries in the forward pass, ``hook_sae_*`` points),
:mod:`.features` (per-feature examples, logit effects, visualizations) and :mod:`.dashboard`.
"""

from .dictionary import KINDS, SparseDictionary, load_dictionary
from .source import ActivationSource, image_forward, unet_forward, unet_inputs
from .splice import SAE_HOOKS, feature_hook, splice, spliced, splices_of, unsplice
from .train import downstream, evaluate, fit_dictionary, train_dictionary

__all__ = [
    "KINDS",
    "SparseDictionary",
    "load_dictionary",
    "ActivationSource",
    "image_forward",
    "unet_forward",
    "unet_inputs",
    "SAE_HOOKS",
    "feature_hook",
    "splice",
    "spliced",
    "splices_of",
    "unsplice",
    "train_dictionary",
    "fit_dictionary",
    "evaluate",
    "downstream",
]
