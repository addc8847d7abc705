"""Recommendation objectives: the paper's BCE and the objectives that hold up under full ranking.

Every loss takes the states ``u`` (n, H) of the n positions that have a target, their target
ids ``pos`` (n,), and the item table; all are means over the n positions.

- ``bce`` — binary cross-entropy with one sampled negative per target (SASRec, Kang & McAuley
  2018; the LLM-ESR paper's objective, SPEC §4.7)::

      l = -log σ(s⁺) - log(1 - σ(s⁻))

- ``ce`` — full-softmax cross-entropy over the whole catalogue (as in BERT4Rec, Sun et al.
  2019, and "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", Klenitskiy &
  Vasilev, RecSys 2023)::

      l = -s⁺ + log Σ_j exp(s_j)       j over items 1..N (padding and mask rows excluded)

  computed by :func:`full_softmax_ce`, which never holds more than a bounded block of the
  (n, N) logits in float32 at a time (see there).

- ``sampled_ce`` — sampled softmax with M negatives shared by the batch (Jean et al. 2015;
  the popularity-corrected form of Yi et al., "Sampling-Bias-Corrected Neural Modeling for
  Large Corpus Item Recommendations", RecSys 2019). With ``logq_correction`` each logit is
  corrected by the log of the expected number of times its item is drawn, ``log(M · Q(j))``
  for sampled items (Bengio & Senécal 2008; TensorFlow's ``sampled_softmax_loss``)::

      l = -(s⁺ - log M Q(pos)) + log[ exp(s⁺ - log M Q(pos)) + Σ_k exp(s_k - log M Q(k)) ]

  Negatives that hit the target are removed (accidental hits). Samplers: ``uniform``
  (Q = 1/N: the correction is a constant and changes nothing), ``popularity`` (Q ∝ the item's
  count among the training interactions, +1 smoothed) and ``in_batch`` (the negatives are the batch's own targets,
  whose distribution is the same popularity Q; the diagonal is the positive).

- ``gbce`` — generalised BCE of gSASRec (Petrov & Macdonald, "gSASRec: Reducing
  Overconfidence in Sequential Recommendation Trained with Negative Sampling", RecSys 2023)
  with M negatives and calibration ``t`` in [0, 1]::

      α = M / (N - 1)                     the negative sampling rate
      β = α (t (1 - 1/α) + 1/α)
      l = -β log σ(s⁺) - Σ_k log(1 - σ(s_k))

  t = 0 gives β = 1: BCE with M negatives (one negative: exactly ``bce``); t = 1 gives β = α.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the objectives, with the paper each comes from (see the module docstring)
LOSSES = ("bce", "ce", "sampled_ce", "gbce")
SAMPLERS = ("uniform", "popularity", "in_batch")

#: largest block of float32 logits (elements) held at once by :func:`full_softmax_ce`:
#: 2^26 = 256 MiB. A batch whose whole (n, N) matrix fits keeps it for the backward pass (no
#: recomputation); a larger one is processed in row blocks of this size, recomputed in the
#: backward pass.
CE_BLOCK_ELEMENTS = 1 << 26


def bce(pos_logit: torch.Tensor, neg_logit: torch.Tensor) -> torch.Tensor:
    """BCE with one negative per target: pos_logit, neg_logit (n,)."""
    return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
            + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's β for M negatives out of N items and calibration t."""
    alpha = num_negatives / max(num_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(pos_logit: torch.Tensor, neg_logit: torch.Tensor, beta: float,
         valid: torch.Tensor | None = None) -> torch.Tensor:
    """gBCE: pos_logit (n,), neg_logit (n, M); ``valid`` (n, M) marks the negatives that count
    (False for accidental hits)."""
    neg = F.logsigmoid(-neg_logit)
    if valid is not None:
        neg = neg * valid
    return -(beta * F.logsigmoid(pos_logit) + neg.sum(dim=1)).mean()


def sampled_softmax(pos_logit: torch.Tensor, neg_logit: torch.Tensor,
                    hits: torch.Tensor | None = None,
                    pos_log_q: torch.Tensor | None = None,
                    neg_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax: pos_logit (n,), neg_logit (n, M) or (M,)-broadcast; ``hits`` (n, M)
    True where a negative is the row's own target (removed); ``pos_log_q`` (n,) and
    ``neg_log_q`` (M,) or (n, M): log expected counts subtracted from the logits (logQ)."""
    if pos_log_q is not None:
        pos_logit = pos_logit - pos_log_q
    if neg_log_q is not None:
        neg_logit = neg_logit - neg_log_q
    if hits is not None:
        neg_logit = neg_logit.masked_fill(hits, float("-inf"))
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1).float()
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


class _Workspaces:
    """Reused float32 blocks for :class:`_FullSoftmaxCE` (per device).

    A fresh (positions x items) block is a fresh ``mmap`` from the allocator (glibc maps
    blocks over 32 MiB directly), so writing it page-faults every page: measured on beauty,
    a (1,100 x 12,101) product into a fresh block took 61 ms against 28 ms into a reused
    one. A forward pass takes a block here and its backward pass gives it back, so several
    losses in one step (``view_aux_loss``) each hold their own.
    """

    def __init__(self, keep: int = 4):
        self.free: dict[torch.device, list[torch.Tensor]] = {}
        self.keep = keep

    def take(self, numel: int, device: torch.device, cap: int) -> torch.Tensor:
        pool = self.free.setdefault(device, [])
        fits = [i for i, b in enumerate(pool) if b.numel() >= numel]
        if fits:     # (by index: list.remove would compare tensors element-wise)
            return pool.pop(min(fits, key=lambda i: pool[i].numel()))[:numel]
        # headroom: a step's number of positions varies from batch to batch
        return torch.empty(min(max(numel, int(numel * 1.25)), max(cap, numel)),
                           dtype=torch.float32, device=device)[:numel]

    def give(self, block: torch.Tensor) -> None:
        base = block._base if block._base is not None else block
        pool = self.free.setdefault(base.device, [])
        pool.append(base)
        if len(pool) > self.keep:
            pool.pop(min(range(len(pool)), key=lambda i: pool[i].numel()))


_WORKSPACES = _Workspaces()


class _FullSoftmaxCE(torch.autograd.Function):
    """Mean over rows of ``logsumexp(u @ table[1:N+1].T) - u · table[target]``.

    Rows are processed in blocks of at most ``budget`` logits, written into reused
    workspaces (:class:`_Workspaces`). When the whole (n, N) matrix fits in ``budget`` the
    forward pass turns it in place into ``exp(logits - rowmax)`` (the unnormalised softmax)
    and keeps it with each row's sum ``s``; the backward pass is then two matrix products
    and no pass over the block: ``p = block / s``, so the 1 / s (and the gradient's scale
    ``g / n``) go on the small (rows, H) operands and results. Otherwise only the
    log-normalisers are kept and each block is recomputed there. The target's own term is
    added separately. Operands that are not float32 (CUDA autocast) take the same steps on
    freshly allocated blocks.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, table: torch.Tensor, target: torch.Tensor,
                num_items: int, budget: int) -> torch.Tensor:
        items = table[1:num_items + 1]                       # padding and mask rows excluded
        n = len(u)
        rows = max(1, budget // max(num_items, 1))
        keep = n * num_items <= budget
        fp32 = u.dtype == torch.float32 and items.dtype == torch.float32
        lse = torch.empty(n, dtype=torch.float32, device=u.device)
        ws = (_WORKSPACES.take(min(n, rows) * num_items, u.device, budget)
              if fp32 else None)
        kept = sums = None
        for r0 in range(0, n, rows):
            ub = u[r0:r0 + rows]
            if fp32:
                block = ws[:len(ub) * num_items].view(len(ub), num_items)
                torch.mm(ub, items.T, out=block)
            else:
                block = (ub @ items.T).float()
            top = block.amax(dim=1)
            block.sub_(top[:, None]).exp_()
            s = block.sum(dim=1)
            lse[r0:r0 + rows] = top + s.log()
            if keep:
                kept, sums = block, s
        if not keep and fp32:
            _WORKSPACES.give(ws)
        pos = (u.float() * table[target].float()).sum(-1)
        ctx.save_for_backward(u, table, target, lse)
        ctx.kept, ctx.sums, ctx.rows, ctx.num_items, ctx.fp32 = kept, sums, rows, num_items, fp32
        return (lse - pos).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, table, target, lse = ctx.saved_tensors
        num_items, rows = ctx.num_items, ctx.rows
        items = table[1:num_items + 1].float()
        n = len(u)
        g = grad.float() / n
        ug = u.float() * g
        if ctx.kept is not None:
            # p = kept / s: the 1 / s scales the (n, H) operand and result, not the block
            block, inv = ctx.kept, ctx.sums.reciprocal()
            grad_u = torch.mm(block, items).mul_(inv[:, None] * g)
            grad_items = torch.mm(block.T, ug * inv[:, None])
            if ctx.fp32:
                _WORKSPACES.give(block)
        else:
            grad_u = torch.empty(u.shape, dtype=torch.float32, device=u.device)
            grad_items = torch.zeros(items.shape, dtype=torch.float32, device=u.device)
            ws = (_WORKSPACES.take(min(n, rows) * num_items, u.device, rows * num_items)
                  if ctx.fp32 else None)
            for r0 in range(0, n, rows):
                ub = u[r0:r0 + rows].float()
                if ws is not None:
                    p = ws[:len(ub) * num_items].view(len(ub), num_items)
                    torch.mm(ub, items.T, out=p)
                else:
                    p = ub @ items.T
                p.sub_(lse[r0:r0 + rows, None]).exp_()           # the softmax
                torch.mm(p, items, out=grad_u[r0:r0 + rows])
                grad_items.addmm_(p.T, ug[r0:r0 + rows])
            if ws is not None:
                _WORKSPACES.give(ws)
            grad_u.mul_(g)
        ctx.kept = ctx.sums = None
        # the target's own term: -g * table[target] for u, -g * u for the target rows
        grad_u.sub_(g * table[target].float())
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=u.device)
        grad_table[1:num_items + 1] = grad_items
        grad_table.index_add_(0, target, -ug)
        return grad_u.to(u.dtype), grad_table.to(table.dtype), None, None, None


def full_softmax_ce(u: torch.Tensor, table: torch.Tensor, target: torch.Tensor,
                    num_items: int, budget: int = CE_BLOCK_ELEMENTS) -> torch.Tensor:
    """Full-softmax CE of states ``u`` (n, H) against ``table`` (N + 2, H) rows 1..N, targets
    ``target`` (n,) in 1..N; a scalar, the mean over rows. Exact (the same value and gradients
    as ``F.cross_entropy`` on the materialised logits), in bounded memory."""
    return _FullSoftmaxCE.apply(u, table, target, num_items, budget)


class _TwoViewCE(torch.autograd.Function):
    """LLM-ESR's full-softmax losses of one step, fused (:func:`two_view_ce`).

    With ``Lc = u_co E_co^T`` and ``Ls = u_se E_se^T`` (n, N), the joint logits are
    ``Lc + w Ls`` (the concatenated score, ``w`` = 1 without ``se_sum_weight``). So the
    three softmaxes need two (n, H) x (H, N) products, not the joint's (n, 2H) x (2H, N) and
    one per view, and the backward pass two per view: the losses' gradients with respect to
    Lc and Ls are ``P - Y + a_co (P_co - Y)`` and ``w (P - Y) + a_se (P_se - Y)`` (P the
    joint softmax, Y the targets), formed in the forward pass in the two blocks that held
    the logits. A third block holds the joint softmax meanwhile. Only float32 operands whose
    (n, N) block fits the budget come here; :func:`two_view_ce` computes the others as
    three :func:`full_softmax_ce`.
    """

    @staticmethod
    def forward(ctx, u_co, u_se, co_table, se_table, log_w, target, num_items, a_co, a_se):
        n, big = len(u_co), num_items
        ec, es = co_table[1:big + 1], se_table[1:big + 1]
        w = float(log_w.exp()) if log_w is not None else 1.0
        dev = u_co.device
        lc, ls, pj = (_WORKSPACES.take(n * big, dev, CE_BLOCK_ELEMENTS).view(n, big)
                      for _ in range(3))
        torch.mm(u_co, ec.T, out=lc)
        torch.mm(u_se, es.T, out=ls)
        torch.add(lc, ls, alpha=w, out=pj)
        top = pj.amax(dim=1)
        pj.sub_(top[:, None]).exp_()
        sj = pj.sum(dim=1)
        lse_j = top + sj.log()
        # Σ_j P_ij Ls_ij, for w's gradient (one dot product a row, no (n, N) temporary)
        p_ls = (torch.bmm(pj[:, None, :], ls[:, :, None]).view(n) / sj
                if log_w is not None and log_w.requires_grad else None)
        lc_t = (u_co * co_table[target]).sum(-1)
        ls_t = (u_se * se_table[target]).sum(-1)
        loss = (lse_j - lc_t - w * ls_t).mean()
        inv_j = sj.reciprocal()[:, None]
        # each view's block becomes, in place, its gradient (less the one-hot terms):
        # a P_view + scale P, with the view's own loss a CE(view) added where a > 0
        for block, a, scale, own_t in ((ls, a_se, w, ls_t), (lc, a_co, 1.0, lc_t)):
            if a:
                top = block.amax(dim=1)
                block.sub_(top[:, None]).exp_()
                s = block.sum(dim=1)
                loss = loss + a * (top + s.log() - own_t).mean()
                block.mul_(a * s.reciprocal()[:, None]).addcmul_(pj, inv_j, value=scale)
            else:
                torch.mul(pj, inv_j * scale, out=block)
        _WORKSPACES.give(pj)
        ctx.save_for_backward(u_co, u_se, co_table, se_table, target,
                              ls_t if p_ls is not None else None)
        ctx.blocks, ctx.p_ls = (lc, ls), p_ls
        ctx.w, ctx.a_co, ctx.a_se, ctx.num_items = w, a_co, a_se, num_items
        return loss

    @staticmethod
    def backward(ctx, grad):
        u_co, u_se, co_table, se_table, target, ls_t = ctx.saved_tensors
        gc, gs = ctx.blocks
        ctx.blocks = None
        big, n, w = ctx.num_items, len(u_co), ctx.w
        g = grad.float() / n
        need = ctx.needs_input_grad
        out = [None] * 9
        for i, (u, table, block, k) in enumerate(
                ((u_co, co_table, gc, 1.0 + ctx.a_co), (u_se, se_table, gs, w + ctx.a_se))):
            # block = dL/dlogits + k Y: the targets' one-hot terms are added by index
            if need[i]:
                out[i] = torch.mm(block, table[1:big + 1]).sub_(k * table[target]).mul_(g)
            if need[2 + i]:
                grad_table = torch.zeros(table.shape, dtype=torch.float32, device=u.device)
                torch.mm(block.T, u, out=grad_table[1:big + 1])
                grad_table.index_add_(0, target, u, alpha=-k)
                out[2 + i] = grad_table.mul_(g)
            _WORKSPACES.give(block)
        if need[4] and ctx.p_ls is not None:
            # d/dlog w of the joint loss: w · mean_i (Σ_j P_ij Ls_ij - Ls_i,target)
            out[4] = (g * n * w * (ctx.p_ls - ls_t).mean()).reshape(())
        ctx.p_ls = None
        return tuple(out)


def two_view_ce(u_co: torch.Tensor, u_se: torch.Tensor, co_table: torch.Tensor,
                se_table: torch.Tensor, log_w: torch.Tensor | None, target: torch.Tensor,
                num_items: int, a_co: float, a_se: float,
                budget: int = CE_BLOCK_ELEMENTS) -> torch.Tensor:
    """LLM-ESR's full-softmax losses: the joint score's, ``CE([u_co; u_se] · [E_co;
    w E_se])``, plus ``a_co CE(u_co · E_co) + a_se CE(u_se · E_se)`` (each view's own,
    ``view_aux_loss``); ``w = exp(log_w)`` (``se_sum_weight``), 1 for None. The same value
    and gradients as the three :func:`full_softmax_ce`, up to float rounding, with about
    half their matrix products (:class:`_TwoViewCE`)."""
    fused = (u_co.dtype == u_se.dtype == co_table.dtype == se_table.dtype == torch.float32
             and len(u_co) * num_items <= budget and len(u_co) > 0)
    if fused:
        return _TwoViewCE.apply(u_co, u_se, co_table, se_table, log_w, target, num_items,
                                float(a_co), float(a_se))
    se_w = se_table if log_w is None else se_table * log_w.exp()
    loss = full_softmax_ce(torch.cat([u_co, u_se], 1), torch.cat([co_table, se_w], 1), target,
                           num_items, budget)
    if a_co:
        loss = loss + a_co * full_softmax_ce(u_co, co_table, target, num_items, budget)
    if a_se:
        loss = loss + a_se * full_softmax_ce(u_se, se_table, target, num_items, budget)
    return loss


def log_expected_counts(q: torch.Tensor, ids: torch.Tensor, m: int) -> torch.Tensor:
    """log(M · Q(ids)) for a sampling distribution ``q`` over table rows."""
    return torch.log(q[ids] * m)


__all__ = ["LOSSES", "SAMPLERS", "CE_BLOCK_ELEMENTS", "bce", "gbce", "gbce_beta",
           "sampled_softmax", "full_softmax_ce", "two_view_ce", "log_expected_counts"]
