"""Checkpoints without pickle: safetensors for tensors, JSON for the rest, atomic folders."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmesr.errors import LlmesrError


def save_weights(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(module: torch.nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LlmesrError(f"cannot read weights {path} ({e}); the file is missing or corrupt"
                          ) from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LlmesrError(f"weights {path} do not fit this model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); was it trained with another config?")


def save_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], np_rng: np.random.Generator) -> None:
    """model + optimizer + counters + RNG states, written to a temp folder then renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_weights(model, tmp / "model.safetensors")
        opt = optimizer.state_dict()
        tensors = {}
        for pid, pstate in opt["state"].items():
            for name, value in pstate.items():
                tensors[f"{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {**state, "param_groups": opt["param_groups"],
                "numpy_rng": np_rng.bit_generator.state}
        (tmp / "state.json").write_text(json.dumps(meta, default=_json_default))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def load_training_state(folder: Path, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, np_rng: np.random.Generator
                        ) -> dict[str, Any]:
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
