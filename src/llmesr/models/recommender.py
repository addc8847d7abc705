"""The sequential recommender: item views + optional cross-attention + one backbone + scoring.

One class serves every model and backbone, so the dual view, the cross-attention and the
self-distillation each live in one place (DESIGN.md "Contracts"):

- ``id``: the plain backbone over a randomly initialised ID table;
- ``llminit``: the same with the ID table initialised from the PCA of the LLM embeddings;
- ``llmesr``: the collaborative view (ID table from PCA) and the semantic view (frozen LLM
  table + adapter), fused by cross-attention, encoded by one shared backbone, and scored by
  the concatenation ``[U_co; U_se] · [e_co; e_se]`` (logit-level fusion, SPEC §4.5).

Shapes: ``seq``/``pos`` (B, T) item ids and positions, left-padded (0 = padding); states
(B, T, H) with H = hidden, or 2 * hidden for the dual view.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmesr.errors import LlmesrError
from llmesr.models import losses
from llmesr.models.backbones import GRUBackbone, TransformerBackbone
from llmesr.models.chunking import plan_chunks
from llmesr.models.config import ModelConfig
from llmesr.models.cross_attention import CrossAttention
from llmesr.models.dropout import Dropout
from llmesr.models.melt import MeltHeads
from llmesr.models.rlmrec import ProfileAlignment
from llmesr.models.views import IDView, SemanticView


class SequentialRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, num_items: int, llm: np.ndarray | None = None,
                 pca: np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg.validate()
        self.num_items = num_items
        self.mask_token = num_items + 1
        h = cfg.hidden
        needs_llm = cfg.model == "llmesr" and cfg.use_se_view
        needs_pca = (cfg.model == "llminit" or (cfg.model == "llmesr" and cfg.use_co_view
                                                 and cfg.co_init == "pca"))
        if needs_llm and llm is None:
            raise LlmesrError("this model needs item embeddings: run 'llmesr embed' first")
        if needs_pca and pca is None:
            raise LlmesrError("this model needs the PCA of the item embeddings: run 'llmesr "
                              f"embed' with --pca-dim {h}")
        self.co = IDView(num_items, h, pca if needs_pca else None,
                         cfg.co_dropout if needs_pca else 0.0) if (
            cfg.model != "llmesr" or cfg.use_co_view) else None
        self.se = SemanticView(llm, num_items, h, cfg.adapter_layers, cfg.adapter_activation,
                               cfg.freeze_semantic) if needs_llm else None
        self.align = None
        if cfg.model == "rlmrec":
            if llm is None:
                raise LlmesrError("rlmrec aligns with the item embeddings: run 'llmesr embed' "
                                  "first")
            self.align = ProfileAlignment(int(llm.shape[1]), h)
            # the profiles (training only; inference is the backbone alone): not saved with
            # the weights, the trainer sets them from the embeddings folder
            prof = torch.zeros(num_items + 2, llm.shape[1])
            prof[1:num_items + 1] = torch.as_tensor(np.asarray(llm, dtype=np.float32))
            self.register_buffer("item_profiles", prof, persistent=False)
            self.register_buffer("user_profiles", torch.zeros(0, llm.shape[1]),
                                 persistent=False)
        if self.se is not None and cfg.se_pop_gate:
            # g = softplus(a + b log(1 + n)); a = log(e - 1), b = 0: g = 1 at the start
            self.pop_gate = nn.Parameter(torch.tensor([math.log(math.e - 1.0), 0.0]))
            # log(1 + n_i) per table row; saved with the weights (serving has no dataset)
            self.register_buffer("log_count", torch.zeros(num_items + 2), persistent=True)
        else:
            self.pop_gate = None
        # w = exp(v) on the semantic part of the joint score; v = 0: w = 1 at the start
        self.se_log_weight = (nn.Parameter(torch.zeros(()))
                              if self.se is not None and cfg.dual and cfg.se_sum_weight
                              else None)
        self.is_gru = cfg.backbone == "gru4rec"
        if not self.is_gru:
            self.pos_emb = nn.Embedding(cfg.max_len + 100, h)
            nn.init.xavier_normal_(self.pos_emb.weight)
            self.emb_dropout = Dropout(cfg.dropout)
        self.encoder = self._backbone()
        self.encoder_se = self._backbone() if (cfg.dual and not cfg.share_encoder) else None
        if cfg.dual and cfg.use_cross_attention:
            causal = cfg.causal_cross_attention and cfg.backbone != "bert4rec"
            self.llm2id = CrossAttention(h, 2, causal, cfg.cross_attention_residual)
            self.id2llm = CrossAttention(h, 2, causal, cfg.cross_attention_residual)
        else:
            self.llm2id = self.id2llm = None
        self.melt = None
        if cfg.model == "melt":
            # drawn last, from a forked generator: the rest of the model, and the training
            # run's random stream, are those of the id model with the same seed, so that
            # MELT's stage 1 is that id run
            with torch.random.fork_rng(devices=[]):
                self.melt = MeltHeads(h)
        if cfg.co_frozen:
            for m in self.frozen_co_modules():
                m.requires_grad_(False)

    def train(self, mode: bool = True) -> "SequentialRecommender":
        super().train(mode)
        if self.cfg.co_frozen:
            # a frozen tower gives the state it gives in evaluation (no dropout), so the
            # semantic tower learns the residual of the score that is served
            self.co.eval()
            self.encoder.eval()
        return self

    def frozen_co_modules(self) -> list[nn.Module]:
        """freeze_co: the collaborative tower's modules (ID table, its encoder, positions)."""
        return [m for m in (self.co, self.encoder, getattr(self, "pos_emb", None))
                if m is not None]

    def _backbone(self) -> nn.Module:
        c = self.cfg
        if self.is_gru:
            return GRUBackbone(c.hidden, c.layers, mask_padding=c.gru_mask_padding)
        return TransformerBackbone(c.hidden, c.layers, c.heads, c.dropout,
                                   causal=c.causal and c.backbone == "sasrec",
                                   mask_padded_keys=c.mask_padded_keys)

    # ---- properties used by the trainer ----------------------------------------------------
    @property
    def state_dim(self) -> int:
        return self.cfg.hidden * (2 if self.cfg.dual else 1)

    @property
    def train_is_deterministic(self) -> bool:
        """No dropout anywhere in training mode (GRU4Rec: none on its inputs, none in the
        GRU, the cross-attention or the adapter), so two forward passes give one value."""
        return self.is_gru and not self.cfg.co_dropout

    @property
    def _gru_prefix(self) -> bool:
        return self.is_gru and not self.cfg.gru_mask_padding

    # ---- encoding --------------------------------------------------------------------------
    def _inputs(self, view: nn.Module, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = view(seq)
        if self.is_gru:  # the paper's GRU4Rec: no scaling, positions or dropout (§4.2)
            return x
        x = x * math.sqrt(self.cfg.hidden) + self.pos_emb(pos)
        if view is self.co and self.cfg.co_frozen:
            return x                     # the frozen tower: as in evaluation
        return self.emb_dropout(x)

    def _encode(self, encoder: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        if self.is_gru:
            out = encoder(x, mask, pad_to=self.cfg.max_len if self._gru_prefix else None)
            return out[:, -1:] if last_only else out
        pad_to = None if self.cfg.mask_padded_keys else self.cfg.max_len
        return encoder(x, mask, pad_to=pad_to, last_only=last_only)

    def encode(self, seq: torch.Tensor, pos: torch.Tensor, last_only: bool = False
               ) -> torch.Tensor:
        """All positions' states (B, T, H), or only the last one's (B, 1, H).

        The result does not depend on how much left padding the batch has, in every preset:
        the padded keys cropped from an unmasked transformer are folded into one virtual key
        (``TransformerBackbone``), and the padded steps cropped from the paper's unmasked GRU
        are replayed from a padded column's input (``GRUBackbone.prefix_state``). Callers
        may therefore crop a batch to its longest history, or run length groups.
        """
        strip = 0
        if self._gru_prefix and seq.shape[1] < self.cfg.max_len and bool((seq[:, 0] > 0).any()):
            # The unmasked GRU replays the cropped padded steps from a padded column's
            # input (after the cross-attention, that input depends on the row): add one.
            seq, pos, strip = F.pad(seq, (1, 0)), F.pad(pos, (1, 0)), 1
        out = self._encode_views(seq, pos, last_only)
        return out[:, strip:] if strip and not last_only else out

    def _encode_views(self, seq: torch.Tensor, pos: torch.Tensor, last_only: bool
                      ) -> torch.Tensor:
        mask = seq > 0
        if self.cfg.dual:
            x_co, x_se = self._inputs(self.co, seq, pos), self._inputs(self.se, seq, pos)
            if self.llm2id is not None:
                # the query comes from the other view (§9.1.4)
                x_co, x_se = self.llm2id(x_se, x_co, mask), self.id2llm(x_co, x_se, mask)
            if self.is_gru and self.encoder_se is None:
                # The shared GRU has no dropout: one call over both views' rows runs half
                # the sequential steps, with the same values as two calls.
                u = self._encode(self.encoder, torch.cat([x_co, x_se]),
                                 torch.cat([mask, mask]), last_only)
                return torch.cat(u.chunk(2), dim=-1)
            u_co = self._encode(self.encoder, x_co, mask, last_only)
            u_se = self._encode(self.encoder_se or self.encoder, x_se, mask, last_only)
            return torch.cat([u_co, u_se], dim=-1)
        view = self.co if self.co is not None else self.se
        return self._encode(self.encoder, self._inputs(view, seq, pos), mask, last_only)

    def user_state(self, seq: torch.Tensor, pos: torch.Tensor, raw: bool = False
                   ) -> torch.Tensor:
        """The last position's state (B, H): the user representation. MELT's tail users
        (at most n_u* items) get f + W_U f, unless ``raw`` (the backbone's f alone); before
        stage 2 sets n_u* it is -1, so nobody is."""
        f = self.encode(seq, pos, last_only=True)[:, -1]
        if self.melt is None or raw:
            return f
        n = (seq > 0).sum(dim=1) - (1 if self.cfg.backbone == "bert4rec" else 0)
        tail = (n <= self.melt.user_thres)[:, None]
        return torch.where(tail, self.melt.residual(f), f)

    def user_states_grouped(self, seq: torch.Tensor, pos: torch.Tensor,
                            max_rows: int | None = None, raw: bool = False) -> torch.Tensor:
        """``user_state`` (B, H, float32) of rows of very different lengths, in length groups.

        The output does not depend on the amount of left padding (see :meth:`encode`), so
        rows are grouped by length (:func:`~llmesr.models.chunking.plan_chunks`) and each
        group is cropped to its own longest history: the same states, far fewer tokens.
        """
        out = torch.empty(len(seq), self.state_dim, device=seq.device)
        for idx, width in plan_chunks((seq > 0).sum(dim=1).cpu().numpy(), max_rows=max_rows):
            i = torch.from_numpy(idx).to(seq.device)
            out[i] = self.user_state(seq[i, -width:], pos[i, -width:], raw=raw).float()
        return out

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate embeddings c_i = [e_co; e_se] for ``ids`` (any shape) or all N + 2 rows
        (e_se times the learnt weight w of ``se_sum_weight``, when on)."""
        parts = []
        if self.co is not None:
            parts.append(self.co.all() if ids is None else self.co(ids))
        if self.se is not None:
            se = self.se_rows(ids)
            parts.append(se if self.se_log_weight is None else se * self.se_log_weight.exp())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def se_rows(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The semantic view's candidate rows e_se (times the popularity gate, when on)."""
        rows = self.se.all() if ids is None else self.se(ids)
        if self.pop_gate is None:
            return rows
        return rows * self.item_gate(ids)[..., None]

    def item_gate(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The popularity gate g_i of ``ids`` (all rows for None); ones when it is off."""
        if self.pop_gate is None:
            return torch.ones(self.table_rows if ids is None else ids.shape,
                              device=self._device())
        logc = self.log_count if ids is None else self.log_count[ids]
        a, b = self.pop_gate
        return F.softplus(a + b * logc)

    @property
    def table_rows(self) -> int:
        """Rows of the item tables: N + 2, plus any items added by :meth:`append_items`."""
        return int(self.co.embedding.num_embeddings if self.co is not None else len(self.se.llm))

    def append_items(self, llm: torch.Tensor | None, co: torch.Tensor | None) -> range:
        """Add M items without training (cold start, for serving): their LLM embeddings
        (M, D) for the semantic view and their collaborative rows (M, hidden) for the ID view,
        each required when the model has that view. They get ids N + 2 ... N + 1 + M, after
        the mask token; returns that range."""
        start = self.table_rows
        sizes = set()
        for view, rows, what, dim in (
                (self.co, co, "collaborative", self.cfg.hidden),
                (self.se, llm, "LLM", None if self.se is None else self.se.llm.shape[1])):
            if view is None:
                continue
            if rows is None or rows.ndim != 2 or rows.shape[1] != dim:
                raise LlmesrError(f"this model needs the new items' {what} embeddings as an "
                                  f"(M, {dim}) matrix, got "
                                  f"{None if rows is None else tuple(rows.shape)}")
            sizes.add(len(rows))
        if len(sizes) != 1:
            raise LlmesrError(f"the new items' embeddings have different counts: {sorted(sizes)}")
        if self.pop_gate is not None:        # a new item has no training count
            self.log_count = torch.cat([self.log_count,
                                        self.log_count.new_zeros(next(iter(sizes)))])
        if self.co is not None:
            self.co.append(co)
        if self.se is not None:
            self.se.append(llm)
        return range(start, start + sizes.pop())

    # ---- scoring ---------------------------------------------------------------------------
    def score_all(self, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, N + 2) scores; columns 0 and N + 1 are padding and mask (callers exclude them)."""
        return self.user_state(seq, pos) @ self.item_embeddings().T

    def score(self, seq: torch.Tensor, pos: torch.Tensor, candidates: torch.Tensor
              ) -> torch.Tensor:
        """(B, C) scores of candidate ids (B, C)."""
        u = self.user_state(seq, pos)
        return (self.item_embeddings(candidates) * u[:, None, :]).sum(-1)

    # ---- losses ----------------------------------------------------------------------------
    def rec_loss(self, states: torch.Tensor, target: torch.Tensor, neg: torch.Tensor
                 ) -> torch.Tensor:
        """The recommendation loss over positions with a target (target > 0).

        states (B, T, H); target (B, T); neg (B, T) one negative per target (bce).
        """
        valid = target > 0
        return self.rec_loss_flat(states[valid], target[valid], neg[valid])

    def set_target_counts(self, counts: np.ndarray) -> None:
        """Each item's count among the training interactions (N,): the popularity distribution
        Q of the ``popularity`` and ``in_batch`` samplers and of their logQ correction.
        Not saved with the weights (training sets it from the dataset)."""
        q = torch.zeros(self.num_items + 2)
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64), dtype=torch.float64)
        # +1 smoothing: an item never seen as a target can still be drawn, and log Q is finite
        q[1:self.num_items + 1] = ((c + 1) / (c + 1).sum()).float()
        self.register_buffer("target_q", q.to(self._device()), persistent=False)
        if self.pop_gate is not None:
            with torch.no_grad():
                self.log_count[1:self.num_items + 1] = torch.log1p(c).float().to(
                    self.log_count.device)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def rec_loss_flat(self, u: torch.Tensor, pos_ids: torch.Tensor, neg_ids: torch.Tensor
                      ) -> torch.Tensor:
        """The same loss from the states (n, H) of the n positions that have a target.

        ``neg_ids`` (n,): the one negative per target of ``bce`` (the batch builder's,
        avoiding the user's items); the other objectives draw their own
        (:mod:`llmesr.models.losses`).
        """
        if len(u) == 0:
            return u.sum() * 0.0
        w = self.cfg.view_aux_loss
        if self.cfg.dual and self.cfg.loss == "ce":
            # the joint softmax and each view's own (view_aux_loss) in one pass, with each
            # view's logits computed once (a frozen collaborative tower has no loss of its own)
            h = self.cfg.hidden
            return losses.two_view_ce(u[:, :h], u[:, h:], self.co.all(), self.se_rows(),
                                      self.se_log_weight, pos_ids, self.num_items,
                                      0.0 if self.cfg.co_frozen else w, w)
        loss = self._objective(u, self.item_embeddings, pos_ids, neg_ids)
        if w and self.cfg.dual:
            # each view's own loss: its half of the state against its own item rows, so each
            # part is a recommender by itself, not only a correction of the other (a frozen
            # collaborative tower has nothing to learn from its own)
            h = self.cfg.hidden
            co_own = None if self.cfg.co_frozen else self._objective(
                u[:, :h], self._view_rows(self.co), pos_ids, neg_ids)
            se_own = self._objective(u[:, h:], self.se_rows, pos_ids, neg_ids)
            loss = loss + w * (se_own if co_own is None else co_own + se_own)
        return loss

    @staticmethod
    def _view_rows(view: nn.Module):
        return lambda ids=None: view.all() if ids is None else view(ids)

    def _objective(self, u: torch.Tensor, rows, pos_ids: torch.Tensor, neg_ids: torch.Tensor
                   ) -> torch.Tensor:
        """``cfg.loss`` of states ``u`` (n, d) scored against ``rows(ids)`` (the item rows of
        ``ids``, or the whole (N + 2, d) table for ``ids=None``)."""
        cfg = self.cfg
        if cfg.loss == "bce":
            pos_logit = (u * rows(pos_ids)).sum(-1)
            neg_logit = (u * rows(neg_ids)).sum(-1)
            return losses.bce(pos_logit, neg_logit)
        if cfg.loss == "ce":
            return losses.full_softmax_ce(u, rows(), pos_ids, self.num_items)
        pos_logit = (u * rows(pos_ids)).sum(-1)
        m = cfg.sampled_negatives
        if cfg.negative_sampler == "in_batch":
            negs, m = pos_ids, len(pos_ids)
        elif cfg.negative_sampler == "popularity":
            negs = torch.multinomial(self._q(), m, replacement=True)
        else:
            negs = torch.randint(1, self.num_items + 1, (m,), device=u.device)
        neg_logit = u @ rows(negs).T                                       # (n, M)
        hits = negs[None, :] == pos_ids[:, None]
        if cfg.loss == "gbce":
            beta = losses.gbce_beta(m, self.num_items, cfg.gbce_t)
            return losses.gbce(pos_logit.float(), neg_logit.float(), beta, ~hits)
        pos_q = neg_q = None
        if cfg.logq_correction and cfg.negative_sampler != "uniform":
            q = self._q()
            pos_q = losses.log_expected_counts(q, pos_ids, m)
            neg_q = losses.log_expected_counts(q, negs, m)
        return losses.sampled_softmax(pos_logit, neg_logit, hits, pos_q, neg_q)

    def _q(self) -> torch.Tensor:
        q = getattr(self, "target_q", None)
        if q is None:
            raise LlmesrError("the popularity sampler needs the items' target counts "
                              "(SequentialRecommender.set_target_counts)")
        return q

    def set_user_profiles(self, profiles: np.ndarray) -> None:
        """rlmrec: each user row's profile embedding (U, d_s)."""
        self.user_profiles = torch.as_tensor(np.asarray(profiles, dtype=np.float32),
                                             device=self.item_profiles.device)

    def align_loss(self, user_states: torch.Tensor, user_rows: torch.Tensor,
                   items: torch.Tensor) -> torch.Tensor:
        """rlmrec: the profile-alignment loss of a batch (users' last states (B, h), their
        rows (B,), the batch's item ids, any shape; see llmesr.models.rlmrec)."""
        ids = torch.unique(items[items > 0])
        return self.align(user_states, self.user_profiles[user_rows], self.co(ids),
                          self.item_profiles[ids], self.cfg.rlmrec_tau)

    def item_reg_loss(self, seq: torch.Tensor) -> torch.Tensor:
        """Alignment of the two views of the batch's items (SPEC §4.8, off in the paper).

        Computed over the batch's *distinct* input items (the paper used every occurrence,
        which makes the matrices grow with B·T).
        """
        if not self.cfg.dual:
            return seq.new_zeros((), dtype=torch.float32)
        ids = torch.unique(seq[seq > 0])
        x, y = self.se(ids), self.co(ids)
        logits = x @ y.T
        targets = F.softmax((y @ y.T + x @ x.T) / 2, dim=-1)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2
