"""Typed settings for each stage. Every field is recorded in the artifact's manifest."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
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
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise LlmesrError(f"min_rating must be a finite number, not {self.min_rating!r}")
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
        if self.max_len < 1:
            raise LlmesrError(f"max_len must be >= 1 (the history cap for user groups), "
                              f"not {self.max_len}")
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


# ---- declared settings: one check of type and range per field ------------------------------

@dataclass(frozen=True)
class Setting:
    """The type and allowed values of one config field.

    A table ``{field: Setting}`` next to a config dataclass is the one place its fields are
    checked, whichever way a value arrives: ``--set key=value`` (a string, :meth:`parse`), a
    ``--config`` file (YAML/JSON values) or Python (:func:`check_settings` from the dataclass's
    ``validate``). Build entries with :func:`Int`, :func:`Float`, :func:`Bool`, :func:`Str`,
    :func:`Choice` and :func:`Choices`.
    """

    kind: type                              #: bool | int | float | str | tuple
    low: float | None = None
    high: float | None = None
    low_open: bool = False                  #: low itself is not allowed
    high_open: bool = False
    #: the allowed values (str/int settings) or the allowed elements (tuple settings)
    choices: tuple | None = None
    #: a regular expression the whole value must match (str settings)
    pattern: str | None = None
    #: None is allowed (written none/null on the command line)
    optional: bool = False
    #: what the setting takes, in words (instead of the one derived from the fields above)
    label: str | None = None
    #: the string "auto" is allowed too (resolved where the setting is used)
    auto: bool = False

    def describe(self) -> str:
        """What the setting takes, for error messages."""
        if self.label is not None:
            return self.label
        if self.kind is tuple:
            return f"a comma-separated list of {', '.join(map(str, self.choices or ()))}"
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        text = {bool: "true, false" if self.auto else "true or false", int: "an integer",
                float: "a number", str: "text"}[self.kind]
        if self.low is not None and self.high is not None:
            text += (f" in {'(' if self.low_open else '['}{_num(self.low)}, "
                     f"{_num(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text += f" {'<' if self.high_open else '<='} {_num(self.high)}"
        if self.pattern is not None:
            text += f" matching {self.pattern}"
        return text + (" or auto" if self.auto else "") + (" (or none)" if self.optional else "")

    def parse(self, key: str, text: str) -> Any:
        """A command-line (or YAML string) value as this setting's type, checked."""
        t = text.strip()
        if self.optional and t.lower() in ("none", "null", ""):
            return None
        if self.auto and t.lower() == "auto":
            return "auto"
        if self.kind is bool:
            if t.lower() in ("1", "true", "yes", "on"):
                return True
            if t.lower() in ("0", "false", "no", "off"):
                return False
        elif self.kind in (int, float):
            try:
                number = self.kind(t)
            except ValueError:
                pass
            else:
                try:
                    return self.check(key, number)
                except LlmesrError:
                    pass        # the message below shows the text as given
        elif self.kind is tuple:
            return self.check(key, tuple(v.strip() for v in t.split(",") if v.strip()))
        else:
            return self.check(key, t)
        raise LlmesrError(f"setting '{key}' must be {self.describe()}, got {text!r}")

    def check(self, key: str, value: Any) -> Any:
        """``value`` if it is allowed (ints widened to float for float settings, lists made
        tuples); otherwise a one-line :class:`LlmesrError` naming the setting."""
        def bad(why: str = "") -> LlmesrError:
            return LlmesrError(f"setting '{key}' must be {self.describe()}, got {value!r}{why}")

        if value is None:
            if self.optional:
                return None
            raise bad()
        if self.auto and isinstance(value, str) and value.lower() == "auto":
            return "auto"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad()
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise bad()
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise bad()
            value = float(value)
            if not math.isfinite(value):
                raise bad()
        elif self.kind is str:
            if not isinstance(value, str):
                raise bad()
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise bad()
        elif self.kind is tuple:
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, (list, tuple)):
                raise bad()
            value = tuple(value)
            if self.choices is not None and any(v not in self.choices for v in value):
                raise bad()
            if len(set(value)) != len(value):
                raise bad(" (an entry is repeated)")
            return value
        if self.choices is not None:
            if value not in self.choices:
                raise bad()
            return value
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad()
        if self.high is not None and (value > self.high
                                      or (self.high_open and value == self.high)):
            raise bad()
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def Int(low: int | None = None, high: int | None = None, **kw: Any) -> Setting:  # noqa: N802
    return Setting(int, low, high, **kw)


def Float(low: float | None = None, high: float | None = None, **kw: Any  # noqa: N802
          ) -> Setting:
    return Setting(float, low, high, **kw)


def Bool(auto: bool = False) -> Setting:  # noqa: N802
    """true or false (with ``auto``: or the string "auto")."""
    return Setting(bool, auto=auto)


def Str(pattern: str | None = None, **kw: Any) -> Setting:  # noqa: N802
    return Setting(str, pattern=pattern, **kw)


def Choice(*values: Any) -> Setting:  # noqa: N802
    """One of ``values`` (all str or all int)."""
    return Setting(type(values[0]), choices=tuple(values))


def Choices(*values: str) -> Setting:  # noqa: N802
    """A tuple of distinct entries from ``values`` (may be empty)."""
    return Setting(tuple, choices=tuple(values))


def check_settings(cfg: Any, table: dict[str, Setting]) -> None:
    """Check (and normalise in place) every field of dataclass ``cfg`` that ``table`` declares.

    A field missing from the table is not checked here; the tests require every field to be
    declared (tests/models/test_config.py)."""
    for f in fields(cfg):
        rule = table.get(f.name)
        if rule is not None:
            object.__setattr__(cfg, f.name, rule.check(f.name, getattr(cfg, f.name)))


def unknown_setting(key: str, known: Any, where: str = "") -> LlmesrError:
    """The error for a key that is no setting, with the closest names."""
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        "; see 'llmesr train --help' for the model and training settings"
    return LlmesrError(f"{where}unknown setting '{key}'{hint}")


# ---- settings files --------------------------------------------------------------------------

def read_settings_file(path: str | Path) -> Any:
    """The parsed content of a YAML or JSON file (JSON for ``.json``, else YAML), with every
    failure as one :class:`LlmesrError` line naming the file."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise LlmesrError(f"{p} is a folder, not a settings file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LlmesrError(f"settings file not found: {p}") from None
    except UnicodeDecodeError:
        raise LlmesrError(f"{p} is not UTF-8 text") from None
    except OSError as e:
        raise LlmesrError(f"cannot read {p} ({e.strerror or e})") from None
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LlmesrError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LlmesrError(f"{p}{where}: not valid YAML ({what})") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        from llmesr.data.io import public_mode   # here: llmesr.data imports this module

        os.chmod(tmp, public_mode())               # mkstemp's 0600 -> 0666 less the umask
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
