"""Shared small inputs: the zoo ResNet / ViT (trained, tiny) and a few hundred planted images."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import visionlens
from visionlens.zoo import data as zdata

if importlib.util.find_spec("overcomplete") is None:
    pytest.skip("needs overcomplete (the dict extra)", allow_module_level=True)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo_resnet() -> visionlens.HookedVisionModel:
    return visionlens.load("zoo:resnet")


@pytest.fixture(scope="session")
def zoo_vit() -> visionlens.HookedVisionModel:
    return visionlens.load("zoo:vit")


@pytest.fixture(scope="session")
def planted() -> zdata.PlantedBatch:
    return zdata.make_batch(160, seed=0, start=0, trigger_fraction=0.3)


@pytest.fixture(scope="session")
def resnet_dict(zoo_resnet, planted):
    from visionlens.plugins.dictionaries import ActivationSource, fit_dictionary

    x = ActivationSource(zoo_resnet, "layer4.hook_out", planted.images).collect()
    d, _ = fit_dictionary(x, "topk", 64, 8, epochs=20, batch_size=64, seed=0)
    d.card["hook"] = "layer4.hook_out"
    return d
