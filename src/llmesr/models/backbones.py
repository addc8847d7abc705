"""Sequence encoders ("backbones") shared by SASRec, Bert4Rec and GRU4Rec (SPEC §4.4, §9.1).

Contract: ``forward(x, padding_mask) -> (B, T, d)`` with ``x`` of shape ``(B, T, d)`` (item
embeddings, positions and embedding dropout already applied by the caller) and ``padding_mask``
a bool ``(B, T)`` tensor that is True for a REAL item and False for padding. Sequences are
LEFT-padded (real items at the end). A backbone knows nothing about items or LLMs.

:class:`TransformerBackbone` is the SASRec encoder of the paper's code (also used by Bert4Rec):

.. code-block:: text

    m = padding_mask (float); H = x * m
    repeat layers:
        Q = LN_attn(H); H = Q + MHA(query=Q, key=H, value=H); H = LN_ffn(H)
        H = H + Drop(W2(ReLU(Drop(W1(H))))); H = H * m
    out = LN_last(H)

Two switches select between the released code and a textbook SASRec:

* ``causal`` (paper: False, SPEC §9.1.1): position t attends only to keys <= t.
* ``mask_padded_keys`` (paper: False, SPEC §9.1.8): padded keys get no attention. When False,
  padded keys are zero vectors after the timeline mask, so their key/value are the projection
  biases ``b_k``/``b_v`` and they take softmax mass (diluting attention for short histories).

With masking, each query is always allowed its own position (the diagonal), so a row with no
real item (an empty history) never yields NaN; padded query rows are zeroed by ``* m`` and for
real queries the diagonal is allowed anyway, so this changes no real output.

Cropping correction (``forward(..., pad_to=L)``): the paper always pads to L = 200. Callers may
crop a batch to its longest sequence; when padded keys are not masked, the ``L - T`` cropped-away
padded keys would each contribute a key ``b_k`` and a value ``b_v`` at every layer (their input
is zero), so they are folded into ONE virtual key column with key ``b_k``, value ``b_v`` and an
additive logit bias ``log(L - T)``. Since ``n`` identical columns with logit ``s`` carry the same
softmax mass as one column with logit ``s + log n``, the eval-mode output equals the uncropped
length-L run exactly (up to float rounding). The missing padding is assumed to be on the left
(before every real item), so with ``causal=True`` every query may see the virtual column. In
training mode the uncropped run's attention dropout keeps each of the ``L - T`` columns
independently; as they carry equal weights and values, only how many are kept matters, so the
virtual column's weight is scaled by ``Binomial(L - T, 1 - p) / ((L - T)(1 - p))``: the same
distribution as the uncropped run's (not the same random draws).

:class:`GRUBackbone` is GRU4Rec's ``nn.GRU(d, d, bias=False)``. ``mask_padding=False`` is the
paper's quirk (SPEC §9.1.7): padded steps are processed like real ones. A batch cropped from
L = 200 columns (``forward(..., pad_to=L)``) replays the missing padded steps from its first
column's input (the same at every padded step), only as many as it takes the GRU to contract
to float resolution (:meth:`GRUBackbone.prefix_state`). ``mask_padding=True``
runs a packed GRU over the real items only, so the state is unaffected by padding and padded
positions output zeros (an empty history outputs zeros everywhere, i.e. the initial state).

Initialisation follows the paper's ``_init_weights`` (SPEC §4.9): ``xavier_normal_`` on weight
matrices, zero attention biases (as torch's ``MultiheadAttention`` does), PyTorch defaults for
LayerNorm and the FFN biases. The q/k/v projection weights are drawn as ONE packed ``(3d, d)``
xavier-normal matrix and split, which gives them the same distribution as torch's
``in_proj_weight`` (std ``sqrt(2 / (d + 3d))``), not that of three separate ``(d, d)`` matrices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from llmesr.errors import LlmesrError
from llmesr.models.dropout import Dropout
from llmesr.models.dropout import dropout as fast_dropout
from llmesr.models.dropout import kept_share

__all__ = ["TransformerBackbone", "GRUBackbone"]


def _check_inputs(x: Tensor, padding_mask: Tensor, hidden: int, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != hidden:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise LlmesrError(f"{who}: x must have shape (B, T, {hidden}), got {shape}")
    if not isinstance(padding_mask, Tensor) or tuple(padding_mask.shape) != tuple(x.shape[:2]):
        shape = tuple(padding_mask.shape) if isinstance(padding_mask, Tensor) else type(padding_mask).__name__
        raise LlmesrError(f"{who}: padding_mask must have shape (B, T) = {tuple(x.shape[:2])}, got {shape}")
    if padding_mask.dtype != torch.bool:
        raise LlmesrError(f"{who}: padding_mask must be a bool tensor (True = real item), got {padding_mask.dtype}")


class _SelfAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (with biases) and fused SDPA."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.heads = heads
        self.head_dim = hidden // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden, hidden, bias=True)
        self.k_proj = nn.Linear(hidden, hidden, bias=True)
        self.v_proj = nn.Linear(hidden, hidden, bias=True)
        self.out_proj = nn.Linear(hidden, hidden, bias=True)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d = self.hidden
        packed = torch.empty(3 * d, d)
        nn.init.xavier_normal_(packed)  # same fan as torch MultiheadAttention.in_proj_weight
        self.q_proj.weight.copy_(packed[:d])
        self.k_proj.weight.copy_(packed[d:2 * d])
        self.v_proj.weight.copy_(packed[2 * d:])
        nn.init.xavier_normal_(self.out_proj.weight)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.zeros_(lin.bias)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, n, hd)

    def forward(self, query: Tensor, key_value: Tensor, mask: Tensor | None,
                n_virtual: int = 0) -> Tensor:
        """``mask``: additive float mask (B or 1, 1, Tq, Tk [+ 1]) or None.

        ``n_virtual`` > 0: append the key ``b_k`` / value ``b_v`` column standing for that
        many cropped padded keys (its logit bias ``log(n)`` is in ``mask``). In training,
        attention dropout keeps each of those keys independently, as the uncropped run
        would: the column's weight is scaled by ``Binomial(n, 1 - p) / (n (1 - p))``.
        """
        virtual_key = n_virtual > 0
        b, t, _ = query.shape
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key_value))
        v = self._split(self.v_proj(key_value))
        if virtual_key:
            bk = self.k_proj.bias.view(1, self.heads, 1, self.head_dim).expand(b, -1, 1, -1)
            bv = self.v_proj.bias.view(1, self.heads, 1, self.head_dim).expand(b, -1, 1, -1)
            k = torch.cat([k, bk.to(k.dtype)], dim=2)
            v = torch.cat([v, bv.to(v.dtype)], dim=2)
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        if self.training and self.dropout > 0.0 and (q.device.type == "cpu" or virtual_key):
            # attention dropout with the cheap CPU mask (see models/dropout.py): the fused
            # kernel would draw it with bernoulli_, the main cost of a teacher pass
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            if virtual_key:
                share = kept_share(attn.shape[:-1] + (1,), n_virtual, self.dropout,
                                   attn.device).to(attn.dtype)
                attn = torch.cat([fast_dropout(attn[..., :-1], self.dropout, True),
                                  attn[..., -1:] * share], dim=-1)
            else:
                attn = fast_dropout(attn, self.dropout, True)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, t, self.hidden)
        return self.out_proj(out)


class _PointWiseFeedForward(nn.Module):
    """``Drop(W2(ReLU(Drop(W1(h)))))``: the paper's two Conv1d(k=1) as Linear layers."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, hidden)
        self.w2 = nn.Linear(hidden, hidden)
        self.drop1 = Dropout(dropout)
        self.drop2 = Dropout(dropout)
        nn.init.xavier_normal_(self.w1.weight)
        nn.init.xavier_normal_(self.w2.weight)

    def forward(self, h: Tensor) -> Tensor:
        return self.drop2(self.w2(F.relu(self.drop1(self.w1(h)))))


class TransformerBackbone(nn.Module):
    """The SASRec/Bert4Rec encoder of SPEC §4.4; see the module docstring for the switches.

    The paper's setting is ``causal=False, mask_padded_keys=False``; the defaults here
    (``True, True``) are a textbook causal SASRec with a key-padding mask.
    """

    def __init__(self, hidden: int = 64, layers: int = 2, heads: int = 1, dropout: float = 0.5,
                 causal: bool = True, mask_padded_keys: bool = True, eps: float = 1e-8) -> None:
        super().__init__()
        if hidden <= 0 or layers <= 0 or heads <= 0:
            raise LlmesrError(f"TransformerBackbone: hidden, layers and heads must be positive, "
                              f"got hidden={hidden}, layers={layers}, heads={heads}")
        if hidden % heads != 0:
            raise LlmesrError(f"TransformerBackbone: hidden ({hidden}) must be divisible by heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise LlmesrError(f"TransformerBackbone: dropout must be in [0, 1), got {dropout}")
        self.hidden = hidden
        self.num_layers = layers
        self.heads = heads
        self.causal = causal
        self.mask_padded_keys = mask_padded_keys
        self.attn_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=eps) for _ in range(layers))
        self.attns = nn.ModuleList(_SelfAttention(hidden, heads, dropout) for _ in range(layers))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=eps) for _ in range(layers))
        self.ffns = nn.ModuleList(_PointWiseFeedForward(hidden, dropout) for _ in range(layers))
        self.last_norm = nn.LayerNorm(hidden, eps=eps)

    def _mask(self, padding_mask: Tensor, n_missing: int, dtype: torch.dtype
              ) -> Tensor | None:
        """The additive attention mask shared by every layer: (B or 1, 1, T, T [+ 1]).

        0 where a query may attend, -inf where not; with ``n_missing`` cropped padded keys, an
        extra last column holding ``log(n_missing)`` for the virtual key.
        """
        b, t = padding_mask.shape
        dev = padding_mask.device
        if not self.causal and not self.mask_padded_keys and n_missing == 0:
            return None
        mask = torch.zeros(b if self.mask_padded_keys else 1, 1, t, t + (n_missing > 0),
                           dtype=dtype, device=dev)
        if self.causal or self.mask_padded_keys:
            allowed = torch.ones(1, 1, t, t, dtype=torch.bool, device=dev)
            if self.causal:
                allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=dev).tril()
            if self.mask_padded_keys:
                allowed = allowed & padding_mask[:, None, None, :]
            # Always allow the diagonal: no all-masked row (no NaN), no change to real outputs.
            allowed = allowed | torch.eye(t, dtype=torch.bool, device=dev)
            mask[..., :t].masked_fill_(~allowed, float("-inf"))
        if n_missing > 0:
            mask[..., t] = math.log(n_missing)
        return mask

    def forward(self, x: Tensor, padding_mask: Tensor, pad_to: int | None = None,
                last_only: bool = False) -> Tensor:
        """(B, T, d) states, or (B, 1, d) with ``last_only`` (the last position's state,
        computed without the other positions' queries in the last layer: the same value)."""
        _check_inputs(x, padding_mask, self.hidden, "TransformerBackbone")
        t = x.shape[1]
        n_missing = 0
        if pad_to is not None:
            if pad_to < t:
                raise LlmesrError(f"TransformerBackbone: pad_to ({pad_to}) is shorter than the "
                                  f"batch's sequence length ({t})")
            if not self.mask_padded_keys:
                n_missing = pad_to - t
        m = padding_mask.unsqueeze(-1).to(x.dtype)
        mask = self._mask(padding_mask, n_missing, torch.float32)
        h = x * m
        last = len(self.attns) - 1
        for i, (ln_a, attn, ln_f, ffn) in enumerate(zip(self.attn_norms, self.attns,
                                                         self.ffn_norms, self.ffns)):
            if last_only and i == last:
                # only the last query: keys and values still come from every position
                q = ln_a(h[:, -1:])
                h = q + attn(q, h, None if mask is None else mask[:, :, -1:], n_missing)
                m = m[:, -1:]
            else:
                q = ln_a(h)
                h = q + attn(q, h, mask, n_missing)
            h = ln_f(h)
            h = h + ffn(h)
            h = h * m
        return self.last_norm(h)


class GRUBackbone(nn.Module):
    """GRU4Rec's encoder: ``nn.GRU(hidden, hidden, num_layers=layers, bias=False)``.

    ``mask_padding=False`` reproduces the paper (padded steps are run through the GRU);
    ``mask_padding=True`` runs only the real items (packed), and padded positions output 0.
    """

    def __init__(self, hidden: int = 64, layers: int = 1, mask_padding: bool = True) -> None:
        super().__init__()
        if hidden <= 0 or layers <= 0:
            raise LlmesrError(f"GRUBackbone: hidden and layers must be positive, got hidden={hidden}, "
                              f"layers={layers}")
        self.hidden = hidden
        self.mask_padding = mask_padding
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, bias=False, batch_first=True)
        #: what the last :meth:`prefix_state` did (steps asked, steps after which the
        #: state had contracted, steps run with autograd): a diagnostic
        self.last_prefix: dict[str, int] = {}
        self._skip_probes = 0
        for name, p in self.gru.named_parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)

    def prefix_state(self, pad_input: Tensor, steps: int, chunk: int = 8) -> Tensor:
        """The GRU state (layers, B, d) after ``steps`` padded steps of input ``pad_input``
        (B, 1, d): what the uncropped run holds when its first kept column starts.

        The input is the same at every padded step, so each row's state follows h <- f(h)
        for a fixed f, and a GRU contracts: after K steps any two starting states have
        become the same to float resolution. :meth:`_contraction` finds K by running the
        real trajectory (from 0) beside one started a unit away in every coordinate (GRU
        states stay inside (-1, 1)), until they are within a few float epsilons: tens of
        steps, not the ~190 padded steps of a short history. Then:

        - the state after K steps is the state after any ``steps`` >= K, to within those
          epsilons (the extra steps only change the start of K contracting steps);
        - with autograd, the last K steps run with it, from the no-grad state before them:
          the earlier steps' gradient would pass through K steps that shrink every change
          below float resolution, so leaving them out changes the gradient by less.

        Without contraction within ``steps`` steps, every step runs (with autograd if on),
        and the next replays skip the probe for a while (:attr:`contracting`).
        """
        b, _, d = pad_input.shape
        if b > 1 and torch.equal(pad_input[:1].expand_as(pad_input), pad_input):
            # one padded input for every row (no cross-attention before the GRU): one scan
            h = self.prefix_state(pad_input[:1], steps, chunk)
            return h.expand(-1, b, -1).contiguous()
        zero = pad_input.new_zeros(self.gru.num_layers, b, d)
        grad = torch.is_grad_enabled()
        with torch.no_grad():
            if self.contracting:
                settled, k, contracted = self._contraction(pad_input.detach(), zero, steps,
                                                           chunk)
                if not contracted and steps >= self.PROBE_MIN_STEPS:
                    self._skip_probes = self.SKIP_PROBES
            else:
                # a recent probe found no contraction: plain scan, no second trajectory
                self._skip_probes -= 1
                k = steps
                settled = None if grad else self.gru(pad_input.expand(b, steps, d), zero)[1]
        self.last_prefix = {"steps": steps, "contracted_after": k,
                            "steps_with_grad": (k if 2 * k <= steps else steps) if grad else 0}
        if not grad:
            return settled
        if 2 * k <= steps:
            start = settled.detach()      # = the state after steps - k >= k steps
        else:
            start, k = zero, steps
        _, h = self.gru(pad_input.expand(b, k, d), start)
        return h

    #: after a probe that found no contraction within this many steps or more, the next
    #: SKIP_PROBES replays run the plain scan (a trained GRU often keeps its state for
    #: longer than the padding: the probe would then only double the work)
    PROBE_MIN_STEPS = 64
    SKIP_PROBES = 50

    @property
    def contracting(self) -> bool:
        """False while recent replays found no contraction (see :meth:`prefix_state`)."""
        return self._skip_probes <= 0

    def _contraction(self, p: Tensor, h: Tensor, steps: int, chunk: int
                     ) -> tuple[Tensor, int, bool]:
        """(state after k steps of input ``p`` from ``h``, k, contracted): k is the first
        multiple of ``chunk`` at which a second start, one unit from ``h`` in every
        coordinate, has come within 4 float epsilons of this trajectory, else ``steps``."""
        b, _, d = p.shape
        eps = 4 * torch.finfo(p.dtype).eps
        both = torch.cat([h, torch.where(h >= 0, h - 1, h + 1)], dim=1)
        inputs = torch.cat([p, p])
        done = 0
        while done < steps:
            k = min(chunk, steps - done)
            _, both = self.gru(inputs.expand(2 * b, k, d), both)
            done += k
            if float((both[:, :b] - both[:, b:]).abs().max()) <= eps:
                return both[:, :b].contiguous(), done, True
        return both[:, :b].contiguous(), done, False

    def forward(self, x: Tensor, padding_mask: Tensor, pad_to: int | None = None) -> Tensor:
        """(B, T, d) outputs. ``pad_to`` (unmasked GRU only): the batch was cropped from
        ``pad_to`` columns; the missing padded steps are accounted for by
        :meth:`prefix_state`, which needs column 0 to be padding in every row."""
        _check_inputs(x, padding_mask, self.hidden, "GRUBackbone")
        if not self.mask_padding:
            t = x.shape[1]
            if pad_to is not None and pad_to < t:
                raise LlmesrError(f"GRUBackbone: pad_to ({pad_to}) is shorter than the "
                                  f"batch's sequence length ({t})")
            n_missing = 0 if pad_to is None else pad_to - t
            if n_missing == 0:
                out, _ = self.gru(x)
                return out
            if bool(padding_mask[:, 0].any()):
                raise LlmesrError("GRUBackbone: a cropped batch needs a padded first column "
                                  "(its input is the padded steps' input)")
            out, _ = self.gru(x, self.prefix_state(x[:, :1], n_missing))
            return out
        b, t, d = x.shape
        # Move each row's real items to the front (order kept): works for left padding and, in
        # fact, for any padding pattern. Then run packed and scatter the outputs back in place.
        order = torch.argsort((~padding_mask).to(torch.int8), dim=1, stable=True)  # (B, T)
        idx = order.unsqueeze(-1).expand(b, t, d)
        front = torch.gather(x, 1, idx)
        lengths = padding_mask.sum(dim=1)
        packed = pack_padded_sequence(front, lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out_packed, _ = self.gru(packed)
        out_front, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=t)
        out = torch.zeros_like(out_front).scatter(1, idx, out_front)
        return out * padding_mask.unsqueeze(-1).to(out.dtype)
