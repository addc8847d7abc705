"""RecTools side of ``benchmarks/peers.py``: train RecTools' SASRecModel on a split, save its
user and item embeddings.

Runs in the peer virtual environment (``peers.py --peer-venv``), never in llmesr's: it imports
RecTools, PyTorch Lightning, pandas and numpy, and nothing of llmesr. ``peers.py`` starts it as

    PEER_VENV/bin/python benchmarks/_peer_rectools.py WORK_DIR

WORK_DIR holds what the parent wrote:

- ``config.json``: the hyper-parameters (hidden, blocks, heads, max_len, dropout, lr,
  batch_size, epochs, loss, n_negatives), ``seed``, ``threads`` and ``num_items``;
- ``train_users.npy`` / ``train_items.npy``: one row per training interaction (llmesr user and
  item ids), each user's rows contiguous and in chronological order;
- ``test_users.npy`` / ``test_items.npy``: the same for the test input of every evaluated user
  (its whole history but the test target).

and gets back:

- ``result.npz``: ``users`` (llmesr user ids that RecTools could encode), ``user_emb``
  (their session embeddings, the last position of the encoder), ``item_emb`` ((N + 1, d), row =
  llmesr item id, row 0 unused), ``item_known`` ((N + 1,) bool, False for items RecTools never
  saw in training: it has no embedding for them), ``top_users`` / ``top_items`` (RecTools' own
  ``recommend`` top-k for a sample of users, to check that dot products of the embeddings
  reproduce its ranking);
- ``result.json``: seconds of every training epoch (a Lightning callback, so dataset
  preparation and the embedding pass are not in it), the whole ``fit`` time, versions, counts.

Timestamps: RecTools orders a user's interactions by ``datetime``; the split has none, so each
row gets a synthetic, strictly increasing one (its row number, in seconds), which keeps the
given order.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

#: seconds of each training epoch, filled by EpochTimer (a module global: RecTools deep-copies
#: the trainer, and with it the callback, before fitting)
EPOCH_SECONDS: list[float] = []
_EPOCH_START: list[float] = []


def _callback_class():
    from pytorch_lightning.callbacks import Callback

    class EpochTimer(Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # noqa: ARG002
            _EPOCH_START.append(time.perf_counter())

        def on_train_epoch_end(self, trainer, pl_module):  # noqa: ARG002
            EPOCH_SECONDS.append(time.perf_counter() - _EPOCH_START[-1])

    return EpochTimer


def make_trainer(epochs: int):
    """A Lightning trainer for exactly ``epochs`` epochs on the CPU, without validation,
    logging, checkpoints or progress bars (module level: RecTools records its import path)."""
    from pytorch_lightning import Trainer

    return Trainer(max_epochs=epochs, min_epochs=epochs, accelerator="cpu", devices=1,
                   deterministic=False, enable_progress_bar=False,
                   enable_model_summary=False, logger=False, enable_checkpointing=False,
                   num_sanity_val_steps=0, callbacks=[_callback_class()()])


def frame(users: np.ndarray, items: np.ndarray):
    import pandas as pd

    from rectools import Columns

    return pd.DataFrame({
        Columns.User: users.astype(np.int64),
        Columns.Item: items.astype(np.int64),
        Columns.Weight: np.ones(len(users), dtype=np.float32),
        # synthetic, strictly increasing: the order given is the chronological order
        Columns.Datetime: pd.to_datetime(np.arange(len(users), dtype=np.int64), unit="s"),
    })


def main() -> None:
    work = Path(sys.argv[1])
    cfg = json.loads((work / "config.json").read_text())
    threads = cfg.get("threads")
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from pytorch_lightning import seed_everything

    import rectools
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    warnings.filterwarnings("ignore", category=UserWarning)
    seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    train = Dataset.construct(frame(np.load(work / "train_users.npy"),
                                    np.load(work / "train_items.npy")))
    loss = cfg["loss"]
    model = SASRecModel(
        n_blocks=cfg["blocks"], n_heads=cfg["heads"], n_factors=cfg["hidden"],
        dropout_rate=cfg["dropout"], session_max_len=cfg["max_len"],
        loss=loss, n_negatives=cfg["n_negatives"] if loss != "softmax" else 1,
        lr=cfg["lr"], batch_size=cfg["batch_size"], epochs=cfg["epochs"],
        # item ids only (the default adds categorical item features; the split has none)
        item_net_block_types=(IdEmbeddingsItemNet,),
        # as llmesr's SASRec: padded keys get no attention, item embeddings scaled by sqrt(d)
        use_key_padding_mask=True, pos_encoding_kwargs={"use_scale_factor": True},
        get_trainer_func=make_trainer, get_trainer_func_kwargs={"epochs": cfg["epochs"]},
        recommend_torch_device="cpu", recommend_batch_size=512,
    )
    t0 = time.perf_counter()
    model.fit(train)
    fit_seconds = time.perf_counter() - t0

    # ---- embeddings for the test inputs -------------------------------------------------------
    test_users = np.load(work / "test_users.npy")
    test = Dataset.construct(frame(test_users, np.load(work / "test_items.npy")))
    wanted = np.unique(test_users)
    prep = model.data_preparator
    t1 = time.perf_counter()
    rec_ds = prep.transform_dataset_u2i(test, wanted)        # drops items unseen in training
    loader = prep.get_dataloader_recommend(rec_ds, 512)      # users in internal id order
    user_emb, item_emb = model.lightning_model._get_user_item_embeddings(loader, "cpu")
    encode_seconds = time.perf_counter() - t1
    users = np.asarray(rec_ds.user_id_map.convert_to_external(np.arange(rec_ds.user_id_map.size)),
                       dtype=np.int64)
    n = int(cfg["num_items"])
    ext = prep.item_id_map.external_ids                       # internal id -> external id
    real = np.arange(prep.n_item_extra_tokens, len(ext))
    ext_real = np.asarray(ext[real], dtype=np.int64)
    table = np.zeros((n + 1, item_emb.shape[1]), dtype=np.float32)
    known = np.zeros(n + 1, dtype=bool)
    table[ext_real] = item_emb.numpy()[real]
    known[ext_real] = True

    # ---- RecTools' own top-k for a sample of users (the parent checks the embeddings) ---------
    k = int(cfg.get("check_k", 10))
    sample = users[np.linspace(0, len(users) - 1, num=min(200, len(users)), dtype=np.int64)]
    reco = model.recommend(users=sample, dataset=test, k=k, filter_viewed=False,
                           on_unsupported_targets="warn")
    reco = reco.sort_values(["user_id", "rank"])
    np.savez(work / "result.npz", users=users, user_emb=user_emb.numpy().astype(np.float32),
             item_emb=table, item_known=known,
             top_users=reco["user_id"].to_numpy(np.int64),
             top_items=reco["item_id"].to_numpy(np.int64),
             top_rank=reco["rank"].to_numpy(np.int64))
    import pytorch_lightning

    result = {
        "epoch_seconds": [round(s, 3) for s in EPOCH_SECONDS],
        "fit_seconds": round(fit_seconds, 2),
        "encode_seconds": round(encode_seconds, 2),
        "train_users": int(prep.train_dataset.user_id_map.size),
        "train_interactions": int(len(prep.train_dataset.interactions.df)),
        "known_items": int(known.sum()),
        "encoded_users": int(len(users)),
        "threads": torch.get_num_threads(),
        "versions": {"rectools": rectools.__version__, "torch": torch.__version__,
                     "pytorch_lightning": pytorch_lightning.__version__,
                     "python": sys.version.split()[0]},
        "peak_rss_mib_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
