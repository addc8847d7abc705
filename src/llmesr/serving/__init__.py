"""Serving: recommend from a trained run, add items by text, an HTTP API.

``Recommender`` and ``Recommendation`` are imported on first use, so that training (which
writes the serving bundle) does not import the serving stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recommendation", "Recommender"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from llmesr.serving import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module 'llmesr.serving' has no attribute {name!r}")
