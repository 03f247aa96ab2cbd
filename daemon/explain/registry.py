"""The explanation methods by name: ``load_method`` imports the module that implements one.

A method module defines ``METHOD``, an object with ``name``, ``load(explainer)`` and
``run(explainer, subject)`` (see ``daemon.explain.base``). The names and their modules are
``daemon.explain_settings.METHODS``: adding a method is one module plus one line there.
"""

from __future__ import annotations

import importlib

from daemon.explain_settings import METHODS


def load_method(name: str):
    """The ``METHOD`` object of a known method (imports its module; no TensorFlow)."""
    if name not in METHODS:
        raise KeyError(f"unknown explanation method {name!r}")
    return importlib.import_module(METHODS[name]).METHOD
