"""Item views: how an item id becomes a vector (SPEC §4.1).

- :class:`IDView`: a trainable table (the collaborative view, E_co), random or PCA-initialised.
- :class:`SemanticView`: the frozen LLM table (E_llm) followed by an adapter.

Both tables have N + 2 rows: row 0 is padding and row N + 1 the Bert4Rec mask token. Both rows
start at zero and, as in the paper, are not excluded from training in the ID table.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmesr.errors import LlmesrError


def _table(values: np.ndarray, num_items: int, what: str) -> torch.Tensor:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != num_items:
        raise LlmesrError(f"{what} has shape {values.shape}, expected ({num_items}, dim): one row "
                          "per item of the dataset")
    table = torch.zeros(num_items + 2, values.shape[1])
    table[1:num_items + 1] = torch.from_numpy(values)
    return table


class IDView(nn.Module):
    """E_co: (N + 2, hidden), trainable.

    ``sparse_grads`` (the trainer sets it): lookups give sparse gradients (the rows looked
    up only). A step makes tens of lookups (length groups, two passes, the loss's items),
    and a dense gradient fills and adds an (N + 2, hidden) table for each: at 200,000
    items, 0.59 s a step against 0.39 s sparse. The trainer turns the sum into one dense
    gradient before Adam (:func:`densify_grads`), so the update is the same dense Adam step
    over the whole table as the paper's. Off by default, as torch's Adam rejects sparse
    gradients.
    """

    @property
    def sparse_grads(self) -> bool:
        return self.embedding.sparse

    @sparse_grads.setter
    def sparse_grads(self, value: bool) -> None:
        self.embedding.sparse = value

    def __init__(self, num_items: int, hidden: int, init: np.ndarray | None = None,
                 cold_dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(num_items + 2, hidden)
        #: probability that a training lookup returns the row's initial (PCA) value instead
        #: (simulated cold start, ModelConfig.co_dropout)
        self.cold_dropout = float(cold_dropout)
        if init is None:
            nn.init.xavier_normal_(self.embedding.weight)
            with torch.no_grad():
                self.embedding.weight[0].zero_()
        else:
            table = _table(init, num_items, "the PCA table")
            if table.shape[1] != hidden:
                raise LlmesrError(f"the PCA table has {table.shape[1]} dimensions but the model "
                                  f"has hidden={hidden}; embed with --pca-dim {hidden}")
            with torch.no_grad():
                self.embedding.weight.copy_(table)
        if self.cold_dropout:
            if init is None:
                raise LlmesrError("co_dropout needs the PCA initialisation")
            # not saved with the weights: training rebuilds it from the embeddings
            self.register_buffer("initial", self.embedding.weight.detach().clone(),
                                 persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        if self.training and self.cold_dropout:
            cold = torch.rand(ids.shape, device=ids.device) < self.cold_dropout
            x = torch.where(cold[..., None], self.initial[ids], x)
        return x

    def all(self) -> torch.Tensor:
        return self.embedding.weight

    def append(self, rows: torch.Tensor) -> None:
        """Add rows (M, hidden) at the end of the table (cold-start items, serving only)."""
        w = self.embedding.weight
        with torch.no_grad():
            table = torch.cat([w.detach(), rows.to(device=w.device, dtype=w.dtype)])
        self.embedding.weight = nn.Parameter(table, requires_grad=w.requires_grad)
        self.embedding.num_embeddings = len(table)


class SemanticView(nn.Module):
    """g(E_llm[i]): the LLM table (a buffer when frozen, so never in the optimiser) + adapter.

    The paper's adapter is Linear(D, D/2) -> Linear(D/2, hidden) with no activation (§9.1.2).
    """

    def __init__(self, llm: np.ndarray, num_items: int, hidden: int, layers: int = 2,
                 activation: bool = False, freeze: bool = True):
        super().__init__()
        table = _table(llm, num_items, "the item embedding table")
        self.frozen = freeze
        if freeze:
            self.register_buffer("llm", table, persistent=True)
        else:
            self.llm = nn.Parameter(table)
        d = table.shape[1]
        if layers == 2:
            mid = max(d // 2, 1)
            mods: list[nn.Module] = [nn.Linear(d, mid)]
            if activation:
                mods.append(nn.ReLU())
            mods.append(nn.Linear(mid, hidden))
        else:
            mods = [nn.Linear(d, hidden)]
        self.adapter = nn.Sequential(*mods)
        for m in self.adapter:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._adapt(self.llm[ids])

    def all(self) -> torch.Tensor:
        return self._adapt(self.llm)

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter of rows x (..., D). Two linear layers with no activation between them
        are one linear map, W = W2 W1 and b = W2 b1 + b2: applied as one, x costs D x hidden
        a row instead of D x D/2 + D/2 x hidden (about a third, forward and backward), and
        W, b are tiny products. The same function and gradients, up to float rounding."""
        mods = self.adapter
        if len(mods) == 2 and isinstance(mods[0], nn.Linear) and isinstance(mods[1], nn.Linear):
            first, second = mods[0], mods[1]
            weight = second.weight @ first.weight
            bias = second.weight @ first.bias + second.bias
            return torch.nn.functional.linear(x, weight, bias)
        return mods(x)

    def append(self, llm_rows: torch.Tensor) -> None:
        """Add LLM embeddings (M, D) at the end of the table (cold-start items, serving only)."""
        with torch.no_grad():
            table = torch.cat([self.llm.detach(),
                               llm_rows.to(device=self.llm.device, dtype=self.llm.dtype)])
        self.llm = table if self.frozen else nn.Parameter(table)


def densify_grads(params) -> None:
    """Turn sparse gradients (from :class:`IDView` lookups) into dense ones, in place."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()
