"""Retrieval-augmented self-distillation (SPEC §4.7).

L_sd = MSE(u_b, mean_k t_bk): the student u_b is the user's last-position state from a second
forward pass (its own dropout mask, gradients on); the teachers t_bk are the states of the
K most similar users' histories (their training items minus the last), computed in train mode
(dropout on, as in the paper, when ``teacher_dropout``; else in eval mode) but without autograd: the paper built their graph and then
detached it, which gives the same values at a large memory cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmesr.models.chunking import plan_chunks


class SelfDistillation(nn.Module):
    def __init__(self, teachers: int = 10, teacher_dropout: bool = True, chunk: int = 2048):
        super().__init__()
        self.teachers = teachers
        self.teacher_dropout = teacher_dropout
        self.chunk = chunk

    def _teacher_states(self, model: nn.Module, seq: torch.Tensor, pos: torch.Tensor
                        ) -> torch.Tensor:
        """Last-position states of the teachers, computed in groups of similar length.

        A batch holds B * K teacher histories whose lengths vary widely; cropping all of them
        to the longest wastes most of the work. When the model's output does not depend on
        the amount of left padding (``model.crop_is_exact``), teachers are grouped by length
        (:func:`~llmesr.models.chunking.plan_chunks`) and each group is cropped to its own
        longest history: the same states, far fewer tokens.
        """
        if not getattr(model, "crop_is_exact", False):
            return model.user_state(seq, pos)
        lengths = (seq > 0).sum(dim=1).cpu().numpy()
        out = torch.empty(len(seq), model.state_dim, device=seq.device)
        for idx, width in plan_chunks(lengths, max_rows=self.chunk):
            i = torch.from_numpy(idx).to(seq.device)
            out[i] = model.user_state(seq[i, -width:], pos[i, -width:]).float()
        return out

    def forward(self, model: nn.Module, seq: torch.Tensor, pos: torch.Tensor,
                teacher_seq: torch.Tensor, teacher_pos: torch.Tensor,
                student: torch.Tensor | None = None) -> torch.Tensor:
        """seq/pos (B, T): the students' inputs; teacher_seq/pos (B * K, T'): K per student.

        ``student`` (B, H): the students' states when the caller already ran the second pass.
        """
        if student is None:
            student = model.user_state(seq, pos)
        was_training = model.training
        if not self.teacher_dropout:
            model.eval()
        try:
            with torch.no_grad():
                teacher = self._teacher_states(model, teacher_seq, teacher_pos)
        finally:
            model.train(was_training)
        teacher = teacher.view(len(seq), self.teachers, teacher.shape[-1]).mean(dim=1)
        return F.mse_loss(student.float(), teacher.float())
