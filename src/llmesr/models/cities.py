"""CITIES: contextual inference of tail-item embeddings (Jang, Lee, Cho and Chung, ICDM 2020;
``../shared/BASELINES.md`` §2).

A backbone trained as usual (``id``) has poor embeddings for rare items. CITIES learns, on the
frequent ("head") items, a function F_φ that rebuilds an item's embedding from a few of the
contexts it occurs in, then replaces the embedding of every rare ("tail") item by F_φ of all
its contexts. The backbone is not fine-tuned afterwards; it runs unchanged with the new table
(as input and, tied, as the scoring matrix).

- **Contexts**: for each occurrence of item i at position t of a user's *training* part
  (``items[:-2]``), the 24 items before and the 24 after, i at the centre replaced by a mask
  vector: 49 slots, padded at the sequence's ends. A context is kept when the window holds
  more than two items counting i.
- **Head / tail (training)**: the method's own split, ``cities_head_count`` (the official
  code: an item is head when it occurs more than 5 times in training). 5% of the head items
  (seeded) are held out for early stopping. Evaluation keeps the dataset's groups.
- **F_φ**: the frozen table's rows of the context, each position scaled by a learnt scalar
  (init 1) plus a sinusoidal encoding / √d, dropout 0.2; two post-LN transformer layers (4
  heads, FFN 2d, ReLU) per context; the mean over its non-pad slots (the centre included);
  two more layers across the K contexts (no mask, no positions); their mean; ``Linear(d,
  d)``. Loss: the mean squared error against the item's own row, head items only; 128 items
  a batch drawn with replacement, one K ~ U{1..cities_max_shots} a batch, K contexts an item
  drawn with replacement; Adam (eps 1e-6) with 100 warm-up steps; an epoch is
  |head train items| / 128 batches; validation MSE averaged over K = 1..max_shots; early
  stopping on it. The official budget (lr 1e-4, patience 10, up to 10^5 epochs) is a GPU's:
  ours defaults to lr 1e-3, 20 epochs, patience 3 (``cities_lr``, ``cities_epochs``,
  ``cities_patience``).
- **Fixed by default, the official code's behaviour behind switches** (the ``paper`` preset):
  ``cities_pe_fix`` (the official positional encoding divides by ``10000**(2i)/d`` instead of
  ``10000**(2i/d)``, so all but the first frequency vanish) and ``cities_restore_best`` (the
  official code infers with the weights of the *last* epoch, not the best one).
- **Mask slot**: the official Bert4Rec table has a trained [MASK] row; SASRec and GRU4Rec
  tables have none. Ours: a learnt vector of F_φ, started from the table's mask row for
  Bert4Rec and from the mean item row otherwise (a GUESS the specification leaves open).
- The official code caps nothing and attends with dropout 0.5; torch's transformer layer uses
  one dropout (0.2) for attention and the FFN here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmesr.errors import LlmesrError
from llmesr.models.chunking import plan_chunks

SIDE = 24                 # context items on each side of the target (official MAX_LEN)
WIDTH = 2 * SIDE + 1      # slots of a context (official MAX_N_SEQ)
BATCH_ITEMS = 128
VALID_SHARE = 0.05
WARMUP = 100


@dataclass
class Contexts:
    """Every kept occurrence of every item in the training parts, grouped by item (CSR)."""

    items: np.ndarray      # the dataset's flat item ids
    occ: np.ndarray        # flat positions of the kept occurrences, sorted by item
    lo: np.ndarray         # (len(occ),) start of the occurrence's user's training part
    hi: np.ndarray         # (len(occ),) its end (exclusive)
    ptr: np.ndarray        # (N + 2,) item i's occurrences are occ[ptr[i]:ptr[i + 1]]
    train_counts: np.ndarray   # (N + 1,) occurrences of each item in training (kept or not)

    @classmethod
    def build(cls, items: np.ndarray, starts: np.ndarray, train_len: np.ndarray,
              num_items: int) -> "Contexts":
        """From the flat items, each user's start offset and training length (TrainView)."""
        items = np.asarray(items, dtype=np.int64)
        lens = np.asarray(train_len, dtype=np.int64)
        user = np.repeat(np.arange(len(lens)), lens)
        first = np.asarray(starts, dtype=np.int64)[user]
        p = first + (np.arange(len(user)) - np.repeat(np.cumsum(lens) - lens, lens))
        lo, hi = first, first + lens[user]
        ids = items[p]
        counts = np.bincount(ids, minlength=num_items + 1)
        size = np.minimum(SIDE, p - lo) + np.minimum(SIDE, hi - p - 1) + 1
        keep = size > 2
        p, lo, hi, ids = p[keep], lo[keep], hi[keep], ids[keep]
        order = np.argsort(ids, kind="stable")
        ptr = np.searchsorted(ids[order], np.arange(num_items + 2))
        return cls(items, p[order], lo[order], hi[order], ptr, counts)

    def n_contexts(self, ids: np.ndarray) -> np.ndarray:
        return self.ptr[ids + 1] - self.ptr[ids]

    def windows(self, k: np.ndarray) -> np.ndarray:
        """(len(k), 49) item ids of occurrences ``k`` (indices into ``occ``); 0 = padding; the
        centre slot holds the target (the encoder replaces it by the mask vector)."""
        p = self.occ[k][:, None] + np.arange(-SIDE, SIDE + 1)[None, :]
        valid = (p >= self.lo[k][:, None]) & (p < self.hi[k][:, None])
        return np.where(valid, self.items[np.clip(p, 0, len(self.items) - 1)], 0)

    def sample(self, ids: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """(len(ids), k, 49): k contexts of each item, drawn with replacement."""
        start, n = self.ptr[ids], self.n_contexts(ids)
        pick = start[:, None] + (rng.random((len(ids), k)) * n[:, None]).astype(np.int64)
        return self.windows(pick.ravel()).reshape(len(ids), k, WIDTH)


def split_items(ctx: Contexts, head_count: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head items to train on, held-out head items, tail items to infer): head = more than
    ``head_count`` training occurrences, tail = 1..head_count; each with a kept context."""
    ids = np.arange(1, len(ctx.train_counts))
    has = ctx.n_contexts(ids) > 0
    counts = ctx.train_counts[1:]
    head = ids[has & (counts > head_count)]
    tail = ids[has & (counts <= head_count) & (counts > 0)]
    head = rng.permutation(head)
    n_val = int(round(len(head) * VALID_SHARE)) if len(head) >= 20 else 0
    return np.sort(head[n_val:]), np.sort(head[:n_val]), tail


def sinusoid(width: int, dim: int, fixed: bool = True) -> torch.Tensor:
    """(width, dim) sinusoidal positions / √dim; ``fixed=False``: the official code's divisor
    ``10000**(2i) / dim`` (BASELINES.md §2.3 quirk 1)."""
    pos = torch.arange(width, dtype=torch.float64)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float64)
    div = 10000.0 ** (i / dim) if fixed else 10000.0 ** i / dim
    pe = torch.zeros(width, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos / div)
    pe[:, 1::2] = torch.cos(pos / div)[:, :dim // 2]
    return (pe / math.sqrt(dim)).float()


def _layers(dim: int, heads: int, n: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.2, batch_first=True)
    return nn.TransformerEncoder(layer, n, enable_nested_tensor=False)


class ContextInference(nn.Module):
    """F_φ: K contexts of each of B items (B, K, 49) ids -> (B, d) embeddings."""

    def __init__(self, table: torch.Tensor, mask_init: torch.Tensor, heads: int = 4,
                 layers: int = 2, pe_fix: bool = True):
        super().__init__()
        dim = table.shape[1]
        if dim % heads:
            raise LlmesrError(f"cities: hidden={dim} must be divisible by its {heads} heads")
        self.register_buffer("table", table.detach().float().clone(), persistent=False)
        self.mask = nn.Parameter(mask_init.detach().float().clone())
        self.w_pos = nn.Parameter(torch.ones(WIDTH))
        self.register_buffer("pe", sinusoid(WIDTH, dim, pe_fix), persistent=False)
        self.drop = nn.Dropout(0.2)
        self.encoder = _layers(dim, heads, layers)
        self.aggregator = _layers(dim, heads, layers)
        self.out = nn.Linear(dim, dim)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        b, k, w = ctx.shape
        flat = ctx.reshape(b * k, w)
        real = flat > 0
        real[:, SIDE] = True                               # the centre: the mask vector
        # Most contexts are short (a history's ends pad them): each is encoded in a group
        # cropped to its widest context around the centre. Padded slots get no attention and
        # are left out of the mean, so the crop changes nothing but the work.
        reach = (real * (torch.arange(w, device=ctx.device) - SIDE).abs()).amax(dim=1)
        pooled = []
        order = []
        for idx, width in plan_chunks((2 * reach + 1).cpu().numpy()):
            h = (width - 1) // 2
            cols = slice(SIDE - h, SIDE + h + 1)
            i = torch.as_tensor(idx, device=ctx.device)
            ids = flat[i, cols]
            x = self.table[ids]
            x[:, h] = self.mask
            x = self.drop(x * self.w_pos[cols, None] + self.pe[cols])
            pad = ids == 0
            pad[:, h] = False
            out = self.encoder(x, src_key_padding_mask=pad)
            keep = (~pad).unsqueeze(-1).to(out.dtype)
            pooled.append((out * keep).sum(1) / keep.sum(1))     # mean over the kept slots
            order.append(i)
        c = torch.empty(b * k, self.out.in_features, device=ctx.device)
        c = c.index_copy(0, torch.cat(order), torch.cat(pooled))
        z = self.aggregator(c.view(b, k, -1)).mean(1)
        return self.out(z)


def _schedule(step: int) -> float:
    """Linear warm-up over 100 steps, then the official linear decay to 0 at 10^6 steps."""
    return min(1.0, (step + 1) / WARMUP) * max(0.0, 1.0 - max(0, step - WARMUP) / (1e6 - WARMUP))


def infer_tail_items(table: torch.Tensor, ctx: Contexts, *, head_count: int = 5,
                     max_shots: int = 10, epochs: int = 20, patience: int = 3,
                     lr: float = 1e-3, pe_fix: bool = True, restore_best: bool = True,
                     mask_row: torch.Tensor | None = None, seed: int = 42,
                     match_norm: bool = False,
                     log: Callable[[str], Any] = print, progress: bool = False
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Train F_φ on the head items of ``table`` (N + 2, d; frozen) and return a copy of the
    table with every tail item's row replaced by F_φ of all its contexts, and a record
    (items replaced, epochs, validation MSE)."""
    from tqdm.auto import tqdm

    device = table.device
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC1]))
    torch.manual_seed(int(rng.integers(2**31)))
    train, valid, tail = split_items(ctx, head_count, rng)
    info: dict[str, Any] = {"head_items": int(len(train) + len(valid)),
                            "valid_items": int(len(valid)), "tail_items": int(len(tail)),
                            "replaced": 0, "epochs": 0, "best_epoch": 0,
                            "valid_mse": None, "head_count": head_count, "valid_history": []}
    new = table.detach().clone()
    if len(train) == 0 or len(tail) == 0:
        log(f"cities: {len(train)} head and {len(tail)} tail items with contexts: nothing "
            "to infer; the table is unchanged")
        return new, info
    items = torch.as_tensor(np.arange(1, table.shape[0] - 1), device=device)
    mask_init = mask_row if mask_row is not None else table[items].mean(0)
    f = ContextInference(table, mask_init, pe_fix=pe_fix).to(device)
    opt = torch.optim.Adam(f.parameters(), lr=lr, eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    target = table.detach().float()
    # validation: fixed contexts per K, drawn once
    vrng = np.random.default_rng(np.random.SeedSequence([seed, 0xC2]))
    vsets = [(torch.as_tensor(ctx.sample(valid, k, vrng), device=device),
              target[torch.as_tensor(valid, device=device)]) for k in range(1, max_shots + 1)
             ] if len(valid) else []

    def valid_mse() -> float:
        f.eval()
        with torch.no_grad():
            out = float(np.mean([F.mse_loss(f(c), t).item() for c, t in vsets]))
        f.train()
        return out

    steps = max(1, len(train) // BATCH_ITEMS)
    best, best_state, bad = math.inf, None, 0
    bar = tqdm(range(1, epochs + 1), desc="cities", unit="epoch", disable=not progress,
               leave=False)
    for epoch in bar:
        f.train()
        total = 0.0
        for _ in range(steps):
            ids = rng.choice(train, BATCH_ITEMS, replace=True)
            k = int(rng.integers(1, max_shots + 1))
            c = torch.as_tensor(ctx.sample(ids, k, rng), device=device)
            loss = F.mse_loss(f(c), target[torch.as_tensor(ids, device=device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        score = valid_mse() if vsets else total / steps
        info["epochs"] = epoch
        info["valid_history"].append(round(score, 6))
        if score < best:
            best, bad, info["best_epoch"] = score, 0, epoch
            best_state = {k: v.detach().clone() for k, v in f.state_dict().items()}
        else:
            bad += 1
        bar.set_postfix(train=f"{total / steps:.4f}", valid=f"{score:.4f}")
        if bad >= patience:
            break
    info["valid_mse"] = round(best, 6)
    if restore_best and best_state is not None:
        f.load_state_dict(best_state)
    log(f"cities: F trained {info['epochs']} epochs (best {info['best_epoch']}, validation "
        f"MSE {best:.4f}); inferring {len(tail)} tail items")
    f.eval()
    n = ctx.n_contexts(tail)
    with torch.no_grad():
        for k in np.unique(n):          # items with the same number of contexts together
            group = tail[n == k]
            for s in range(0, len(group), max(1, 4096 // int(k))):
                ids = group[s:s + max(1, 4096 // int(k))]
                occ = ctx.ptr[ids][:, None] + np.arange(k)[None, :]
                c = torch.as_tensor(ctx.windows(occ.ravel()).reshape(len(ids), int(k), WIDTH),
                                    device=device)
                new[torch.as_tensor(ids, device=device)] = f(c).to(new.dtype)
    if match_norm and len(tail):
        # each inferred row keeps the direction F gives it and the norm of the row it replaces
        t = torch.as_tensor(tail, device=device)
        old = table.detach()[t].norm(dim=1, keepdim=True)
        new[t] = new[t] * (old / new[t].norm(dim=1, keepdim=True).clamp_min(1e-12))
    info["replaced"] = int(len(tail))
    return new, info
