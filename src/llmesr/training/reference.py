"""The original code's way of computing a training step, kept as the yardstick for the fast one.

:meth:`Trainer._step <llmesr.training.trainer.Trainer._step>` is fast because it crops each
batch to its longest history and runs rows in length groups, accounts for the cropped padding
in closed form (padded keys) or by replay (the unmasked GRU's padded steps), runs the teachers
without autograd in length groups, and reuses the rec pass as the student when the model has
no dropout. :func:`reference_step` does none of that: like the paper's code it pads every
sequence of the batch (inputs, targets, negatives, teachers) to ``max_len``, runs the student
as a second full-length pass, and runs all ``B * K`` teachers in one full-length pass with
autograd whose result is then detached.

With dropout off, a step has no randomness left but the batch, so both give the same losses
and updates up to float rounding: ``benchmarks/equivalence.py`` trains the same model both
ways on the same batches and compares them step by step (and ``tests/training`` does so on a
small sample).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llmesr.training.batches import to_tensors


def pad_batch(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Every (rows, T) array of a batch left-padded with zeros to ``width`` columns."""
    out = {}
    for key, value in batch.items():
        if key == "rows" or value.ndim != 2:
            out[key] = value
        else:
            out[key] = np.pad(value, ((0, 0), (width - value.shape[1], 0)))
    return out


def reference_step(trainer, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """One optimiser step of ``trainer``'s model on ``batch``, computed the original way.

    Returns the loss parts like ``Trainer._step``: ``rec``, ``sd`` (with self-distillation),
    ``reg`` (with item regularisation) and ``loss``.
    """
    model, mcfg = trainer.model, trainer.mcfg
    t = to_tensors(trainer.device, **{k: v for k, v in pad_batch(batch, mcfg.max_len).items()
                                      if k != "rows"})
    seq, pos, target, neg = t["seq"], t["pos"], t["target"], t["neg"]
    states = model.encode(seq, pos)
    valid = target > 0
    rec = model.rec_loss_flat(states[valid], target[valid], neg[valid])
    loss = rec
    parts = {"rec": float(rec.detach())}
    if trainer.distill is not None:
        student = model.user_state(seq, pos)                 # a second full pass
        was_training = model.training
        if not trainer.distill.teacher_dropout:
            model.eval()
        try:
            teacher = model.user_state(t["teacher_seq"], t["teacher_pos"]).detach()
        finally:
            model.train(was_training)
        teacher = teacher.view(len(seq), trainer.distill.teachers, -1).mean(dim=1)
        sd = F.mse_loss(student.float(), teacher.float())
        loss = loss + mcfg.alpha * sd
        parts["sd"] = float(sd.detach())
    if mcfg.item_reg:
        reg = model.item_reg_loss(seq)
        loss = loss + mcfg.beta * reg
        parts["reg"] = float(reg.detach())
    return trainer.update(loss, parts)


def state_vector(model: torch.nn.Module) -> torch.Tensor:
    """Every trainable parameter of ``model``, flattened into one float32 vector (a copy)."""
    return torch.cat([p.detach().float().reshape(-1).cpu() for p in model.parameters()
                      if p.requires_grad])


def update_gap(start: torch.Tensor, a: torch.nn.Module, b: torch.nn.Module) -> float:
    """How far apart two models trained from ``start`` (a :func:`state_vector`) ended, as a
    share of how far ``b`` moved: ``|theta_a - theta_b| / |theta_b - start|``."""
    va, vb = state_vector(a), state_vector(b)
    return float((va - vb).norm() / (vb - start).norm().clamp_min(1e-30))


__all__ = ["pad_batch", "reference_step", "state_vector", "update_gap"]
