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


class SelfDistillation(nn.Module):
    def __init__(self, teachers: int = 10, teacher_dropout: bool = True, chunk: int = 2048):
        super().__init__()
        self.teachers = teachers
        self.teacher_dropout = teacher_dropout
        self.chunk = chunk

    def _teacher_states(self, model: nn.Module, seq: torch.Tensor, pos: torch.Tensor
                        ) -> torch.Tensor:
        """Last-position states of the teachers, run in length groups (B * K histories
        whose lengths vary widely; see ``SequentialRecommender.user_states_grouped``)."""
        return model.user_states_grouped(seq, pos, max_rows=self.chunk)

    def forward(self, model: nn.Module, seq: torch.Tensor, pos: torch.Tensor,
                teacher_seq: torch.Tensor, teacher_pos: torch.Tensor,
                student: torch.Tensor | None = None) -> torch.Tensor:
        """seq/pos (B, T): the students' inputs; teacher_seq/pos (B * K, T'): K per student.

        ``student`` (B, H): the students' states when the caller already ran the second pass.
        """
        if student is None:
            student = model.user_state(seq, pos)
        return self.loss(student, self.teacher_states(model, teacher_seq, teacher_pos))

    @staticmethod
    def loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """MSE of the students (B, H) against the mean of their teachers (B, K, H)."""
        return F.mse_loss(student.float(), teacher.float().mean(dim=1))

    def teacher_states(self, model: nn.Module, teacher_seq: torch.Tensor,
                       teacher_pos: torch.Tensor) -> torch.Tensor:
        """The teachers' states (B * K histories -> (B, K, H)), without autograd, in eval
        mode unless ``teacher_dropout``."""
        was_training = model.training
        if not self.teacher_dropout:
            model.eval()
        try:
            with torch.no_grad():
                teacher = self._teacher_states(model, teacher_seq, teacher_pos)
        finally:
            model.train(was_training)
        return teacher.view(-1, self.teachers, teacher.shape[-1])
