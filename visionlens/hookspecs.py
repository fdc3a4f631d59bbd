"""The visionlens extension API: pluggy hook specifications.

A plugin is any module or object with functions named like the specs below, marked with
``@visionlens.hookimpl``, and advertised through the ``visionlens`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.visionlens]
    my_analysis = "my_package.my_analysis"

Built-in analyses (``visionlens.plugins.*``) and adapters are registered the same way.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "visionlens"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def visionlens_register_analyses() -> list[Any]:
    """Return analyses this plugin provides.

    Each item is an object (or class) following :class:`visionlens.analysis.Analysis`:
    ``name``, ``summary``, ``Config`` (a dataclass of typed, validated options with defaults),
    ``supports(model) -> (bool, reason)`` and ``run(model, inputs, config) -> Result``.
    """


@hookspec
def visionlens_register_adapters() -> list[Any]:
    """Return :class:`visionlens.adapters.Adapter` subclasses for new model families.

    ``HookedVisionModel.from_module(m)`` tries every registered adapter's ``matches(m)``,
    highest ``priority`` first, before falling back to the generic adapter.
    """


@hookspec
def visionlens_register_objectives() -> list[Any]:
    """Return feature-visualization objective factories.

    Each item is ``(prefix, factory)``: ``factory(model, spec: str) -> Objective`` builds an
    objective from the whole string (``"prefix:argument"``); ``model`` may be None when an
    objective is parsed before a model is known. The feature-visualization API looks the prefix
    up when it parses objective strings.
    """


@hookspec
def visionlens_register_model_specs() -> list[Any]:
    """Return ``(prefix, loader)`` pairs: ``visionlens.load("prefix:name")`` calls ``loader(name, **kw)``."""


@hookspec
def visionlens_register_transfer_techniques() -> list[Any]:
    """Return techniques that join the technique-transfer table (``visionlens bench transfer``).

    Each item follows :class:`visionlens.zoo.technique.Technique`: ``name``, ``claim`` (the kind of
    ground-truth claim, e.g. ``"localization"``), ``supports(model, entry) -> (bool, reason)`` and
    ``score(model, ctx) -> visionlens.zoo.Score`` (1 = the planted truth recovered perfectly, with
    the chance level on the same inputs). The benchmark recomputes every score on a randomly
    initialised copy of the model (the Adebayo et al. sanity check).
    """


@hookspec
def visionlens_register_commands(subparsers: Any) -> None:
    """Add subcommands to the ``visionlens`` command line.

    ``subparsers`` is the ``argparse`` sub-parser action of the ``visionlens`` parser. Add one
    parser per command and give it ``set_defaults(handler=fn)``, where ``fn(args) -> int`` runs the
    command and returns its exit status. Raise :class:`visionlens.VisionLensError` for bad input:
    the CLI prints it as one ``visionlens: error: ...`` line with exit status 2. Helpers for the
    usual options live in :mod:`visionlens.commands` (``add_model_options``, ``load_model``).
    """
