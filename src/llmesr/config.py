"""Typed settings for each stage. Every field is recorded in the artifact's manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from llmesr.errors import LlmesrError


@dataclass
class PrepareConfig:
    """How raw interactions become a dataset (the order below is the order applied).

    The defaults are a sensible recipe for a user's own data (5-core until stable, chronological
    order, leave-one-out); the named datasets set the paper's recipes (see ``llmesr.data.registry``).
    """

    #: keep interactions whose rating is >= this (None: keep all; the paper keeps rating > 0,
    #: i.e. all reviews).
    min_rating: float | None = None
    #: keep interactions with timestamp in [date_start, date_end] (ISO dates/times, UTC,
    #: inclusive); None leaves that side open. The paper's Yelp: 2000-01-01 .. 2019-12-31.
    date_start: str | None = None
    date_end: str | None = None
    #: chronological order of each history: ``timestamp`` (stable sort, so file order breaks
    #: ties, as Python's sort in the paper code) or ``file`` (the file order is the time order).
    #: ``timestamp`` falls back to file order for sources without timestamps (recorded).
    order: str = "timestamp"
    #: repeated (user, item) pairs: ``keep`` all (the paper), keep the ``first`` or the ``last``.
    duplicates: str = "keep"
    #: k-core thresholds on interaction counts (0 disables a side).
    kcore_user: int = 5
    kcore_item: int = 5
    #: ``single``: one pass on the counts of the data before filtering (the paper code's
    #: ``filter_common``; items can end below the threshold); ``iterative``: repeat until every
    #: user and item meets its threshold (a true k-core).
    kcore_mode: str = "iterative"
    #: drop users with fewer interactions than this after the k-core (the paper code's
    #: ``filter_minmum(3)``); in ``iterative`` mode it takes part in the loop.
    min_history: int = 3
    #: users with fewer than 3 interactions (no room for a validation and a test item):
    #: ``keep`` (the paper: trained on everything and evaluated with their last, already-seen
    #: item as target), ``no_eval`` (trained on, never evaluated) or ``drop``.
    short_users: str = "keep"
    #: internal ids 1..N: ``first_appearance`` (the paper's ``id_map``: users in order of first
    #: appearance in the file, items in order of first appearance walking users in that order
    #: and each history in time order), ``file`` (users and items in file order of first kept
    #: appearance, as MELT/SASRec scripts) or ``source`` (numeric order of the raw ids; keeps
    #: ids of already-numbered files such as inter.txt).
    id_order: str = "first_appearance"

    _choices = {
        "order": ("timestamp", "file"),
        "duplicates": ("keep", "first", "last"),
        "kcore_mode": ("single", "iterative"),
        "short_users": ("keep", "no_eval", "drop"),
        "id_order": ("first_appearance", "file", "source"),
    }

    def validate(self) -> "PrepareConfig":
        for name, allowed in self._choices.items():
            if getattr(self, name) not in allowed:
                raise LlmesrError(f"{name} must be one of {', '.join(allowed)}, "
                                  f"not {getattr(self, name)!r}")
        for name in ("kcore_user", "kcore_item", "min_history"):
            if getattr(self, name) < 0:
                raise LlmesrError(f"{name} must be >= 0")
        return self


@dataclass
class LongTailConfig:
    """Long-tail user and item groups (SPEC §2).

    A test case is a *tail user* case when the test input length ``min(n - 1, max_len)`` is
    below ``ts_user``, and a *tail item* case when its target's popularity is below ``ts_item``.
    Thresholds left at None are derived by the Pareto rule (see ``llmesr.data.longtail``).
    """

    ts_user: int | None = None
    ts_item: int | None = None
    #: ``paper``: number of distinct users whose whole sequence (train + valid + test) holds
    #: the item, as the original code counts; ``train``: the same over training parts only, so
    #: no evaluation target leaks into the grouping.
    popularity: str = "paper"
    #: share used by the Pareto rule: tail users are at most this share of evaluated users and
    #: head items hold at least this share of the popularity mass.
    pareto_share: float = 0.8
    #: cap on the history length used for user grouping (the model's max_len, 200 in the paper).
    max_len: int = 200

    def validate(self) -> "LongTailConfig":
        if self.popularity not in ("paper", "train"):
            raise LlmesrError(f"popularity must be 'paper' or 'train', not {self.popularity!r}")
        if not 0.0 < self.pareto_share < 1.0:
            raise LlmesrError("pareto_share must be between 0 and 1")
        for name in ("ts_user", "ts_item"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise LlmesrError(f"{name} must be >= 1")
        return self


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def coerce(cls: type, key: str, value: str) -> Any:
    """Convert a command-line string to the type of field ``key`` of dataclass ``cls``."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if key not in names:
        raise LlmesrError(f"unknown setting '{key}'; settings: {', '.join(sorted(names))}")
    typ = str(hints[key])
    if value.lower() in ("none", "null", "") and "None" in typ:
        return None
    try:
        if "int" in typ:
            return int(value)
        if "float" in typ:
            return float(value)
    except ValueError:
        raise LlmesrError(f"setting '{key}' needs a number, got {value!r}") from None
    return value


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cfg)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise LlmesrError(f"unknown setting(s) {bad} for {type(cfg).__name__}; settings: "
                          f"{', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **overrides)
