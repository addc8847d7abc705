"""Item and user prompts (SPEC §3.2-3.3).

A prompt is built from an item's fields. Fields are found by *role*: title, brand, price,
categories, description, features, date, city, stars, review_count, type and open. Each role
has column synonyms, so ``name`` or ``movie_title`` serve as the title. ``PromptConfig.fields``
maps a role to a column explicitly.

Two styles:

- ``paper``: the original notebooks' strings, verbatim. This includes their typos
  ("perference"), the Beauty user prompt's "fashions", the Fashion template's "score is
  <date>", and "unknown" for missing fields. Use it to get embeddings as close as possible to
  the authors'.
- ``clean`` (default): the same templates without the typos. Missing fields are left out
  instead of written as "unknown", so an item with only a title still gets a fluent prompt.

Domains: ``beauty`` / ``fashion`` / any other product word use the Amazon product template,
``poi`` the Yelp template, ``movie`` a movie template, ``generic`` lists every text field.
A custom item template is a format string over role names, e.g. ``"{title} by {brand}"``;
a missing value renders as an empty string.

User prompts use the titles of the user's *training* items only (the last two items are the
validation and test targets, so they are never included). They keep only the last
``history_chars`` characters of the history.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from llmesr.errors import LlmesrError

ROLES: dict[str, tuple[str, ...]] = {
    "title": ("title", "name", "movie_title", "item_name"),
    "brand": ("brand", "store"),
    "price": ("price",),
    "categories": ("categories", "category", "class", "genres", "genre"),
    "description": ("description", "desc"),
    "features": ("feature", "features"),
    "date": ("date", "release_date", "release_year", "year"),
    "city": ("city",),
    "stars": ("stars", "average_rating"),
    "review_count": ("review_count", "rating_number"),
    "type": ("type",),
    "open": ("open", "is_open"),
}

PRODUCT_DOMAINS = ("beauty", "fashion", "product", "toys", "sports", "games", "books")
HISTORY_NOUN = {"poi": "points of interest", "movie": "movies", "generic": "items"}


@dataclass
class PromptConfig:
    """How item and user texts are written; recorded in the embedding manifest."""

    #: beauty | fashion | <other product word> | poi | movie | generic
    domain: str = "generic"
    #: clean | paper
    style: str = "clean"
    #: role -> column of the item table, overriding the synonyms
    fields: dict[str, str] = field(default_factory=dict)
    #: a custom item template over role names (overrides the domain's)
    item_template: str | None = None
    #: keep the last N characters of a user's history (the paper: 8000)
    history_chars: int = 8000
    #: cut whole prompts to this many characters (the paper's Beauty: 4095; None = no cut)
    max_chars: int | None = 4095

    def validate(self) -> "PromptConfig":
        if self.style not in ("clean", "paper"):
            raise LlmesrError(f"prompt style must be 'clean' or 'paper', not {self.style!r}")
        unknown = sorted(set(self.fields) - set(ROLES))
        if unknown:
            raise LlmesrError(f"unknown prompt role(s) {unknown}; roles: {', '.join(ROLES)}")
        if self.item_template is not None:
            names = {f for _, f, _, _ in string.Formatter().parse(self.item_template) if f}
            bad = sorted(names - set(ROLES))
            if bad:
                raise LlmesrError(f"item template uses unknown role(s) {bad}; roles: "
                                  f"{', '.join(ROLES)}")
        return self


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, (str, list, tuple, np.ndarray)) and len(v) == 0:
        return True
    return False


def _flat(v: Any) -> list[str]:
    """A value as a list of strings: lists flattened one level, scalars as one string."""
    if _missing(v):
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        out: list[str] = []
        for x in v:
            out.extend(_flat(x) if isinstance(x, (list, tuple, np.ndarray)) else
                       ([] if _missing(x) else [str(x)]))
        return out
    return [str(v)]


def _text(v: Any, sep: str = ", ") -> str | None:
    parts = _flat(v)
    return sep.join(parts) if parts else None


def resolve_columns(columns: list[str], cfg: PromptConfig) -> dict[str, str]:
    """role -> column for the roles this item table can fill."""
    out: dict[str, str] = {}
    for role, synonyms in ROLES.items():
        if role in cfg.fields:
            if cfg.fields[role] not in columns:
                raise LlmesrError(f"prompt field {role}={cfg.fields[role]!r} is not a column of "
                                  f"the item table (columns: {', '.join(columns)})")
            out[role] = cfg.fields[role]
            continue
        for syn in synonyms:
            if syn in columns and syn not in cfg.fields.values():
                out[role] = syn
                break
    return out


# ---- paper templates (verbatim strings, SPEC §3.2) ------------------------------------------

def _paper_value(v: Any, long_rule: bool = False) -> str:
    if _missing(v):
        return "unknown"
    s = str(v) if not isinstance(v, (list, tuple, np.ndarray)) else str(list(v))
    return "unknown" if long_rule and len(s) > 100 else s


def paper_beauty(r: dict[str, Any]) -> str:
    text = ("The beauty item has following attributes: \n name is "
            f"{_paper_value(r.get('title'))}; brand is {_paper_value(r.get('brand'))}; price is "
            f"{_paper_value(r.get('price'))}. \n")
    cats = r.get("categories")
    if not _missing(cats):
        first = cats[0] if isinstance(cats, (list, tuple, np.ndarray)) and len(cats) and \
            isinstance(cats[0], (list, tuple, np.ndarray)) else cats
        text += ("The item has following features: " + "".join(f"{x}; " for x in _flat(first))
                 )[:2048] + ". \n"
    text += f"The item has following descriptions: {_paper_value(r.get('description'))}. \n"
    return text


def paper_fashion(r: dict[str, Any]) -> str:
    text = ("The fashion item has following attributes: \n name is "
            f"{_paper_value(r.get('title'), True)}; brand is {_paper_value(r.get('brand'), True)}"
            f"; score is {_paper_value(r.get('date'), True)}; price is "
            f"{_paper_value(r.get('price'), True)}. \n")
    for head, role in (("The item has following features: ", "features"),
                       ("The item has following descriptions: ", "description")):
        if r.get(role) is not None:
            text += (head + "".join(f"{x}; " for x in _flat(r.get(role))))[:2048] + ". \n"
    return text


def paper_yelp(r: dict[str, Any]) -> str:
    cats = "".join(f"{c} " for c in _flat(r.get("categories")))
    return ("The point of interest has following attributes: \n name is "
            f"{_paper_value(r.get('title'))}; category is {cats}; type is "
            f"{_paper_value(r.get('type'))}; open status is {_paper_value(r.get('open'))}; "
            f"review count is {_paper_value(r.get('review_count'))}; city is "
            f"{_paper_value(r.get('city'))}; average score is {_paper_value(r.get('stars'))}.")


# ---- clean templates ------------------------------------------------------------------------

def _attrs(pairs: list[tuple[str, str | None]]) -> str:
    return "; ".join(f"{k} {v}" for k, v in pairs if v)


def clean_item(r: dict[str, Any], domain: str, row: dict[str, Any]) -> str:
    """Clean-style prompt; ``r`` holds values by role, ``row`` the raw text columns."""
    if domain == "poi":
        body = _attrs([("name is", _text(r.get("title"))),
                       ("category is", _text(r.get("categories"))),
                       ("city is", _text(r.get("city"))),
                       ("average score is", _text(r.get("stars"))),
                       ("review count is", _text(r.get("review_count")))])
        return f"The point of interest has following attributes: \n {body}." if body else \
            "A point of interest."
    if domain == "movie":
        body = _attrs([("title is", _text(r.get("title"))),
                       ("release date is", _text(r.get("date"))),
                       ("genres are", _text(r.get("categories")))])
        return f"The movie has following attributes: \n {body}." if body else "A movie."
    if domain == "generic":
        body = "; ".join(f"{col} is {_text(row.get(col))}" for col in row
                         if _text(row.get(col)))
        return f"The item has following attributes: \n {body}." if body else "An item."
    word = "product" if domain == "product" else f"{domain} item"
    text = ""
    body = _attrs([("name is", _text(r.get("title"))), ("brand is", _text(r.get("brand"))),
                   ("price is", _text(r.get("price")))])
    text += f"The {word} has following attributes: \n {body}. \n" if body else f"A {word}. \n"
    for head, role in (("features", "categories"), ("features", "features"),
                       ("descriptions", "description")):
        value = _text(r.get(role), "; ")
        if value:
            text += f"The item has following {head}: {value[:2048]}. \n"
    return text


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


class PromptBuilder:
    """Builds item and user prompts for one item table."""

    def __init__(self, item_table: pd.DataFrame, cfg: PromptConfig):
        self.cfg = cfg.validate()
        text_cols = [c for c in item_table.columns
                     if c not in ("item_id", "raw_id", "popularity", "tail_item", "raw_key")]
        self.columns = resolve_columns(text_cols, cfg)
        self.text_cols = text_cols
        self.table = item_table

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        return {role: row.get(col) for role, col in self.columns.items()}

    def item_prompt(self, row: dict[str, Any]) -> str:
        r = self._record(row)
        cfg = self.cfg
        if cfg.item_template is not None:
            text = cfg.item_template.format_map(
                _Blank({k: _text(v) or "" for k, v in r.items()}))
        elif cfg.style == "paper" and cfg.domain == "beauty":
            text = paper_beauty(r)
        elif cfg.style == "paper" and cfg.domain == "fashion":
            text = paper_fashion(r)
        elif cfg.style == "paper" and cfg.domain == "poi":
            text = paper_yelp(r)
        else:
            domain = cfg.domain if cfg.domain in ("poi", "movie", "generic") else (
                cfg.domain if cfg.domain in PRODUCT_DOMAINS else "product")
            text = clean_item(r, domain, {c: row.get(c) for c in self.text_cols})
        if cfg.max_chars is not None and len(text) > cfg.max_chars + 1:
            text = text[: cfg.max_chars]
        return text

    def item_prompts(self) -> list[str]:
        """One prompt per item, in item-id order."""
        records = self.table.to_dict("records")
        return [self.item_prompt(r) for r in records]

    def titles(self) -> list[str | None]:
        col = self.columns.get("title")
        if col is None:
            return [None] * len(self.table)
        return [_text(v) for v in self.table[col].tolist()]

    def user_prompts(self, offsets: np.ndarray, items: np.ndarray,
                     train_lengths: np.ndarray) -> list[str]:
        """One prompt per user from the titles of their training items (ids are 1-based)."""
        cfg = self.cfg
        titles = self.titles()
        lookup = np.array([""] + [t or "" for t in titles], dtype=object)
        if cfg.style == "paper":
            noun = "point of interests" if cfg.domain == "poi" else "fashions"
            head = f"The user has visited following {noun}: \n"
            tail = " \nplease conclude the user's perference."
        else:
            noun = HISTORY_NOUN.get(cfg.domain, "products")
            head = f"The user has interacted with the following {noun}: \n"
            tail = " \nPlease summarize the user's preferences."
        out = []
        for u in range(len(offsets) - 1):
            start = offsets[u]
            names = lookup[items[start:start + train_lengths[u]]]
            history = "".join(f"{t}, " for t in names if t)
            if len(history) > cfg.history_chars:
                history = history[-cfg.history_chars:]
            text = head + history + tail
            if cfg.max_chars is not None and len(text) > cfg.max_chars + 1:
                text = text[: cfg.max_chars]
            out.append(text)
        return out
