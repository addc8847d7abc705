"""Checkpoints without pickle: safetensors for tensors, JSON for the rest; crash-safe folders.

A folder that is replaced as a whole (a run's ``checkpoint/``, ``added_items/``, ``bundle/``)
goes through :func:`replace_directory`, five steps of which each is one rename or removal::

    1. fill    .NAME.partial        written whole (a leftover one is removed first)
    2. commit  .NAME.partial -> .NAME.new     from here on the new content is the live one
    3. aside   NAME -> .NAME.old    (when NAME exists)
    4. swap    .NAME.new -> NAME
    5. clean   remove .NAME.old

A kill at any instant (SIGKILL, power cut) leaves a state that :func:`recover_directory`,
called by every reader and writer before it looks at NAME, completes (``.NAME.new`` present:
steps 3-5 again) or rolls back (only ``.NAME.partial``: removed, NAME is the old content),
so NAME is always found whole, and leftovers never block the next write. Folders left by
llmesr versions that replaced folders in other ways (``checkpoint.old`` and ``.checkpoint.*``
temporaries, ``.NAME.old-PID`` and ``.NAME.*.partial``) are recovered the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmesr.data.io import public_mode
from llmesr.errors import LlmesrError

#: called with each step's name ("filled", "committed", "aside", "swapped", "cleaned") once it
#: is done: tests look at the folder as a kill at that instant would leave it
STEP_HOOK: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


def swap_names(target: Path) -> tuple[Path, Path, Path]:
    """The temporary names of ``target``'s replacement: (partial, new, old)."""
    return tuple(target.with_name(f".{target.name}.{s}")  # type: ignore[return-value]
                 for s in ("partial", "new", "old"))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (a power cut; a kill needs nothing)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


_held: dict[tuple[str, int], int] = {}


@contextlib.contextmanager
def folder_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on ``target`` between processes (and threads), held while a folder
    is recovered, read as a whole or replaced: ``.NAME.lock`` beside it, locked with flock
    (released by the system when a process dies). Reentrant within a thread. Where the
    folder's parent cannot be written (a read-only run) nothing is locked: nothing will be
    written there either."""
    try:
        import fcntl
    except ImportError:           # not POSIX: no cross-process lock
        yield
        return
    path = Path(target).with_name(f".{Path(target).name}.lock")
    key = (str(path.absolute()), threading.get_ident())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        fh = open(path, "a")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]


def recover_directory(target: Path, *, complete: Callable[[Path], bool] | None = None,
                      legacy: Iterable[Path] = ()) -> bool:
    """Finish or undo an interrupted :func:`replace_directory` of ``target`` and remove its
    leftovers; returns whether ``target`` exists afterwards.

    ``legacy``: folders an older llmesr may have left beside ``target`` (best first); when
    ``target`` is missing, the first that ``complete`` accepts becomes it, and all are
    removed. Where the folder cannot be written (read-only), a whole ``target`` is used as it
    is and the leftovers stay.
    """
    target = Path(target)
    partial, new, old = swap_names(target)
    legacy = [p for p in legacy if p.exists()]
    if not (partial.exists() or new.exists() or old.exists() or legacy):
        return target.is_dir()                 # the usual case: nothing to do, nothing written
    try:
        if partial.exists():                   # killed while filling: roll back
            _remove(partial)
        if new.is_dir():                       # killed after the commit: roll forward
            if target.is_dir():
                if old.exists():
                    _remove(old)
                os.replace(target, old)
            os.replace(new, target)
            _fsync_dir(target.parent)
        elif not target.is_dir():              # only an earlier copy is left (older versions)
            for cand in [old, *legacy]:
                if cand.is_dir() and (complete is None or complete(cand)):
                    os.replace(cand, target)
                    _fsync_dir(target.parent)
                    break
        for p in (new, old, *legacy):
            if p.exists() or p.is_symlink():
                _remove(p)
    except OSError as e:
        if target.is_dir() and not new.exists():
            return True
        raise LlmesrError(f"cannot recover {target} after an interrupted update "
                          f"({e.strerror or e}: {e.filename}); fix the permissions of "
                          f"{target.parent}") from None
    return target.is_dir()


def replace_directory(target: Path, fill: Callable[[Path], None], *,
                      complete: Callable[[Path], bool] | None = None,
                      legacy: Iterable[Path] = (), lock: bool = True) -> None:
    """Replace (or create) the folder ``target`` with what ``fill(folder)`` writes into an
    empty folder, so that a kill at any instant leaves either the old or the new content
    whole (see the module's docstring). An exception from ``fill`` leaves ``target`` as it
    was. ``complete`` and ``legacy``: as for :func:`recover_directory`. ``lock``: hold
    :func:`folder_lock` (other processes may read or write ``target`` meanwhile)."""
    target = Path(target)
    with folder_lock(target) if lock else contextlib.nullcontext():
        if target.exists() and not target.is_dir():
            raise LlmesrError(f"{target} is a file; a folder is expected there")
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_directory(target, complete=complete, legacy=legacy)
        partial, new, old = swap_names(target)
        partial.mkdir()
        try:
            fill(partial)
            _fsync_tree(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        _step("filled")
        os.replace(partial, new)
        _fsync_dir(target.parent)
        _step("committed")
        try:
            if target.exists():
                os.replace(target, old)
                _step("aside")
            os.replace(new, target)
            _fsync_dir(target.parent)
            _step("swapped")
        except Exception:                     # not a kill: put the old content back
            with contextlib.suppress(OSError):
                if not target.exists() and old.is_dir():
                    os.replace(old, target)
                _remove(new)
            raise
        shutil.rmtree(old, ignore_errors=True)
        _step("cleaned")


# ---- weights and training state -------------------------------------------------------------
def save_weights(module: torch.nn.Module, path: Path) -> None:
    """A safetensors file, written under a temporary name and renamed (never half a file)."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(state, str(tmp))
        os.chmod(tmp, public_mode())          # safetensors writes 0600; the umask's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_weights(module: torch.nn.Module, path: Path, allow_missing: tuple[str, ...] = ()
                 ) -> None:
    """Load ``path`` into ``module``; every tensor must fit, except that parameters named
    one of ``allow_missing``, or under one of them (e.g. a stage's new heads), may be
    absent."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LlmesrError(f"cannot read weights {path} ({e}); the file is missing or corrupt"
                          ) from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:             # tensors of other shapes
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln),
                     str(e).splitlines()[0] if str(e) else "")
        raise LlmesrError(f"weights {path} do not fit the model its config.json describes "
                          f"({first}); the run's files are from different runs") from None
    missing = [k for k in missing
               if k not in allow_missing and not k.startswith(tuple(f"{p}." for p in allow_missing))]
    if missing or unexpected:
        raise LlmesrError(f"weights {path} do not fit this model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); was it trained with another config?")


def checkpoint_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole training state (state.json is written last)."""
    try:
        meta = json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(
        (Path(folder) / f).is_file() for f in ("model.safetensors", "optimizer.safetensors"))


_OLD_TEMP = re.compile(r"\.[^.]+\.[A-Za-z0-9_]{8}$")   # tempfile.mkdtemp(prefix=".NAME.")


def _legacy_checkpoints(folder: Path) -> list[Path]:
    """What llmesr 0.1 left when killed while replacing ``folder``: its temporary folders
    (newest first), then ``NAME.old``."""
    prefix = f".{folder.name}."
    temps = [p for p in folder.parent.glob(f"{prefix}*")
             if _OLD_TEMP.fullmatch(p.name) and p.name.startswith(prefix) and p.is_dir()] \
        if folder.parent.is_dir() else []
    temps.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return temps + [folder.with_name(folder.name + ".old")]


def recover_checkpoint(folder: Path) -> bool:
    """Repair ``folder`` after a kill while it was being replaced (see the module's
    docstring) and remove leftovers; returns whether it now holds a whole training state."""
    folder = Path(folder)
    recover_directory(folder, complete=checkpoint_complete, legacy=_legacy_checkpoints(folder))
    return checkpoint_complete(folder)


def save_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], np_rng: np.random.Generator) -> None:
    """model + optimizer + counters + RNG states, replacing ``folder`` crash-safely."""

    def fill(tmp: Path) -> None:
        save_weights(model, tmp / "model.safetensors")
        opt = optimizer.state_dict()
        tensors = {}
        for pid, pstate in opt["state"].items():
            for name, value in pstate.items():
                tensors[f"{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        os.chmod(tmp / "optimizer.safetensors", public_mode())
        meta = {**state, "param_groups": opt["param_groups"],
                "numpy_rng": np_rng.bit_generator.state}
        (tmp / "state.json").write_text(json.dumps(meta, default=_json_default))

    folder = Path(folder)
    replace_directory(folder, fill, complete=checkpoint_complete,
                      legacy=_legacy_checkpoints(folder), lock=False)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def load_training_state(folder: Path, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, np_rng: np.random.Generator
                        ) -> dict[str, Any]:
    folder = Path(folder)
    recover_checkpoint(folder)
    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise LlmesrError(f"cannot resume from {folder} ({e}); the checkpoint is corrupt; "
                          "start again with --overwrite") from None
    load_weights(model, folder / "model.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key == "rng.torch":
            continue
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    np_rng.bit_generator.state = meta.pop("numpy_rng")
    return meta


# ---- the run directory, for (re)starting and resuming ----------------------------------------
#: what training writes into a run directory (RUN_DIR/added_items/ is serving's, kept)
RUN_FILES = ("config.json", "config.yaml", "bundle", "tensorboard", "train_log.csv",
             "model.safetensors", "checkpoint", "metrics.json", "backbone.safetensors",
             "cities.json")
#: what a run holds until its first checkpoint is saved: nothing worth keeping
_BEFORE_FIRST_EPOCH = {"config.json", "config.yaml", "bundle", "tensorboard",
                       "train_log.csv", "model.safetensors", "backbone.safetensors"}


def _is_run_config(path: Path) -> bool:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("kind") == "llmesr-run"


def run_progress(run_dir: Path) -> str:
    """How far the run in ``run_dir`` got, to decide whether training may start there:

    - ``"empty"``: missing, or an empty folder;
    - ``"checkpoint"``: an llmesr run with a whole training state to resume from (an
      interrupted checkpoint swap is repaired first);
    - ``"started"``: an llmesr run that stopped before its first checkpoint (a failure or a
      kill in the first epoch): nothing in it is worth keeping;
    - ``"other"``: anything else (a finished run, or files that are not an llmesr run's).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "empty"
    if not run_dir.is_dir():
        return "other"
    names = _names_but_leftovers(run_dir)
    if names is None:
        return "other"
    if not names:
        return "empty" if not any(run_dir.iterdir()) else "started"   # only our leftovers
    if not _is_run_config(run_dir / "config.json"):
        return "other"
    if recover_checkpoint(run_dir / "checkpoint"):
        return "checkpoint"
    names = _names_but_leftovers(run_dir) or set()
    return "started" if names <= _BEFORE_FIRST_EPOCH else "other"


def _names_but_leftovers(run_dir: Path) -> set[str] | None:
    """The names in ``run_dir`` other than llmesr's hidden temporaries and locks (None when
    it holds a hidden file that is not llmesr's, such as .git)."""
    ours = (*RUN_FILES, "added_items", "ranks_test_")
    names = set()
    for p in run_dir.iterdir():
        if not p.name.startswith("."):
            names.add(p.name)
        elif not p.name[1:].startswith(ours):
            return None
    return names


def clear_run(run_dir: Path) -> None:
    """Remove what training wrote into ``run_dir`` (see :data:`RUN_FILES`; also the results
    of an earlier run: ``ranks_test_*.npy``, and swap leftovers), before starting it again, so
    that nothing of the earlier run (log rows, a checkpoint) mixes with the new one. Only
    from an llmesr run (its config.json says so): another program's files are never touched,
    only llmesr's hidden leftovers."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    ours = _is_run_config(run_dir / "config.json")
    doomed = [run_dir / n for n in RUN_FILES] + list(run_dir.glob("ranks_test_*.npy")) \
        if ours else []
    for name in ("checkpoint", "bundle"):
        doomed += [p for p in swap_names(run_dir / name)]
    legacy = _legacy_checkpoints(run_dir / "checkpoint")
    doomed += legacy if ours else legacy[:-1]                 # checkpoint.old: only a run's
    doomed += [run_dir / ".model.safetensors.tmp", run_dir / ".bundle.lock",
               run_dir / ".backbone.safetensors.tmp"]
    for p in doomed:
        if p.exists() or p.is_symlink():
            _remove(p)


def trim_train_log(path: Path, epoch: int) -> None:
    """Drop the rows after ``epoch`` from a train_log.csv: a run killed after logging an
    epoch but before saving its checkpoint does that epoch again when resumed."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = lines[:1]
    for line in lines[1:]:
        head = line.split(",", 1)[0].strip()
        if head.isdigit() and int(head) > epoch:
            continue
        keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)
