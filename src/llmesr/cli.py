"""The ``llmesr`` command. Thin: it parses arguments and calls library functions.

User mistakes (:class:`llmesr.errors.LlmesrError`, missing files, bad options) end with a
one-line ``llmesr: error: ...`` on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmesr import __version__
from llmesr.config import LongTailConfig, PrepareConfig, coerce
from llmesr.errors import LlmesrError

# Preprocessing flags: (flag, PrepareConfig field, help).
_PREP_FLAGS = [
    ("--min-rating", "min_rating", "keep interactions with rating >= X"),
    ("--date-start", "date_start", "keep interactions at or after this date/time (UTC)"),
    ("--date-end", "date_end", "keep interactions at or before this date/time (UTC)"),
    ("--order", "order", "history order: timestamp (stable) | file"),
    ("--duplicates", "duplicates", "repeated (user, item) pairs: keep | first | last"),
    ("--kcore-user", "kcore_user", "minimum interactions per user in the k-core"),
    ("--kcore-item", "kcore_item", "minimum interactions per item in the k-core"),
    ("--kcore-mode", "kcore_mode", "single (one pass, as the paper code) | iterative"),
    ("--min-history", "min_history", "drop users with fewer interactions"),
    ("--short-users", "short_users", "users with < 3 interactions: keep | no_eval | drop"),
    ("--id-order", "id_order", "id numbering: first_appearance | file | source"),
]
_LT_FLAGS = [
    ("--ts-user", "ts_user", "tail-user threshold: test history length < N"),
    ("--ts-item", "ts_item", "tail-item threshold: target popularity < N"),
    ("--popularity", "popularity", "popularity: paper (all splits) | train (training only)"),
    ("--pareto-share", "pareto_share", "share for derived thresholds (default 0.8)"),
    ("--max-len", "max_len", "history cap used for user groups (default 200)"),
]
# `prepare table` column flags -> table reader options.
_TABLE_FLAGS = [
    ("--user-col", "user_col", "user id column (default user_id)"),
    ("--item-col", "item_col", "item id column (default item_id)"),
    ("--time-col", "time_col", "timestamp column (seconds, milliseconds or dates)"),
    ("--rating-col", "rating_col", "rating column"),
    ("--item-id-col", "item_id_col", "item id column of the items file (default: --item-col)"),
    ("--text-fields", "text_fields", "comma-separated text columns of the items file"),
    ("--sep", "sep", "field separator for CSV/TSV"),
    ("--format", "format", "interactions format: auto | csv | tsv | parquet | jsonl"),
    ("--time-unit", "time_unit", "auto | s | ms | iso"),
]


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmesr", description="Long-tail sequential recommendation enhanced by "
                "language-model embeddings (LLM-ESR).")
    p.add_argument("--version", action="version", version=f"llmesr {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    prep = sub.add_parser(
        "prepare", help="turn a dataset or raw files into a dataset directory",
        description="Read a named dataset (see 'llmesr datasets') or files in a known format, "
                    "filter, split leave-one-out, compute long-tail groups and write DIR.",
        epilog="examples:\n  llmesr prepare beauty-s3rec --out data/beauty\n"
               "  llmesr prepare amazon2014-beauty --source ~/Downloads --out data/beauty14\n"
               "  llmesr prepare table --source ratings.csv --items items.csv --user-col uid "
               "--item-col iid --time-col ts --text-fields title,genres --out data/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("name", help="dataset name or format name")
    prep.add_argument("--source", help="input file or folder (optional for local snapshots)")
    prep.add_argument("--items", help="item text / metadata file, when not found from --source")
    prep.add_argument("--out", required=True, help="output dataset directory")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prep.add_argument("--download", action="store_true",
                      help="download a raw-source dataset's files first (into --cache-dir)")
    prep.add_argument("--cache-dir", help="download folder (default $LLMESR_CACHE or "
                      "~/.cache/llmesr)")
    prep.add_argument("-o", "--option", action="append", type=_kv, default=[],
                      metavar="KEY=VALUE", help="reader option (repeatable)")
    for flag, dest, hlp in _PREP_FLAGS:
        prep.add_argument(flag, dest=f"prep_{dest}", help=hlp)
    for flag, dest, hlp in _LT_FLAGS:
        prep.add_argument(flag, dest=f"lt_{dest}", help=hlp)
    for flag, dest, hlp in _TABLE_FLAGS:
        prep.add_argument(flag, dest=f"tbl_{dest}", help=f"(table) {hlp}")
    prep.add_argument("--quiet", action="store_true", help="print nothing but errors")

    info = sub.add_parser("info", help="print statistics of a prepared dataset",
                          epilog="example:\n  llmesr info data/beauty",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("dir", help="dataset directory written by 'llmesr prepare'")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.add_argument("--verify", action="store_true", help="check every file's sha256")

    emb = sub.add_parser(
        "embed", help="embed item texts and user histories; PCA; similar users",
        description="Build item and user prompts, embed them with a text encoder (cached by "
                    "content, resumable), reduce items by PCA and find each user's most "
                    "similar users. Writes DATA_DIR/semantic/<encoder>/.",
        epilog="examples:\n  llmesr embed data/beauty\n"
               "  llmesr embed data/beauty --encoder hash:256 --backend faiss\n"
               "  llmesr embed data/beauty --encoder openai:text-embedding-3-small "
               "--encoder-opt base_url=http://127.0.0.1:8000/v1\n"
               "  llmesr embed data/beauty14 --style paper --domain beauty",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    emb.add_argument("dir", help="dataset directory written by 'llmesr prepare'")
    emb.add_argument("--encoder", help="default (bundled all-MiniLM-L6-v2) | PATH or NAME of a "
                     "sentence-transformers model | openai:MODEL | hash[:DIM]")
    emb.add_argument("--encoder-opt", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                     help="encoder option, e.g. device=cuda, batch_size=128, base_url=..., "
                          "api_key_env=... (repeatable)")
    emb.add_argument("--domain", help="prompt domain: beauty | fashion | <product word> | poi | "
                     "movie | generic (default: from the dataset)")
    emb.add_argument("--style", help="prompt style: clean | paper")
    emb.add_argument("--field", action="append", type=_kv, default=[], metavar="ROLE=COLUMN",
                     help="use COLUMN of the item table for a prompt role (title, brand, "
                          "categories, description, ...)")
    emb.add_argument("--item-template", help="custom item prompt, e.g. '{title} by {brand}'")
    emb.add_argument("--pca-dim", type=int, default=64, help="PCA size (0 = skip; default 64)")
    emb.add_argument("--neighbors", type=int, default=100,
                     help="similar users per user (0 = skip; default 100)")
    emb.add_argument("--backend", default="exact",
                     help="similar-user search: exact | faiss | faiss-ivf | faiss-hnsw")
    emb.add_argument("--no-users", action="store_true", help="items only")
    emb.add_argument("--cache-dir", help="embedding cache (default DATA_DIR/semantic/.cache)")
    emb.add_argument("--quiet", action="store_true", help="no progress bars or messages")

    imp = sub.add_parser(
        "import-authors", help="import the LLM-ESR authors' released embeddings (pickles)",
        description="Import itm_emb_np.pkl, usr_emb_np.pkl, pca64_itm_emb_np.pkl and "
                    "sim_user_100.pkl for a dataset prepared from the same inter.txt. Pickle "
                    "files can run code when loaded: this needs --allow-pickle, and loads only "
                    "NumPy arrays.",
        epilog="example:\n  llmesr prepare llmesr-yelp --out data/yelp\n"
               "  llmesr import-authors data/yelp --source ~/LLM-ESR/data/yelp/handled "
               "--allow-pickle",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("dir", help="dataset directory")
    imp.add_argument("--source", required=True, help="folder with the authors' .pkl files")
    imp.add_argument("--allow-pickle", action="store_true",
                     help="confirm the files come from a trusted source")
    imp.add_argument("--name", default="authors-ada002", help="output folder name under "
                     "DATA_DIR/semantic/")
    imp.add_argument("--overwrite", action="store_true")

    tr = sub.add_parser(
        "train", help="train a model (id, llminit, llmesr, rlmrec, cities, melt) on a "
                      "prepared "
                      "dataset",
        description="Train SASRec / Bert4Rec / GRU4Rec, plain (id), with an LLM-initialised ID "
                    "table (llminit), with LLM-ESR (llmesr), with RLMRec-Con's profile "
                    "alignment (rlmrec), plain and then CITIES' inferred tail-item rows "
                    "(cities), or plain and then MELT's user and item branches (melt), "
                    "early-stopped on validation NDCG@10, then evaluate the test "
                    "split. Settings: --set key=value for any "
                    "field of llmesr.models.config.ModelConfig / TrainConfig (e.g. alpha=0, "
                    "use_cross_attention=false, adapter_layers=1, co_init=random, "
                    "share_encoder=false, loss=ce, patience=5, valid_protocol=sampled). "
                    "Layers, lowest first: --preset, then --config FILE (YAML or JSON of "
                    "the same fields, flat or under 'model:' and 'train:'; a run's "
                    "config.yaml / config.json and the best.yaml of 'llmesr tune' are such "
                    "files), then --set, --seed and --epochs. Every value is checked (type "
                    "and range) before training starts.",
        epilog="examples:\n  llmesr train data/beauty --model llmesr --backbone sasrec --out "
               "runs/llmesr-sasrec\n  llmesr train data/beauty --model id --preset paper "
               "--seed 43 --epochs 50 --set patience=5 --out runs/id-paper-43\n"
               "  llmesr train data/beauty --model llmesr --set alpha=0 --out runs/no-sd\n"
               "  llmesr train data/beauty --model cities --init-from runs/id-sasrec "
               "--out runs/cities\n"
               "  llmesr train data/beauty --model melt --init-from runs/id-sasrec "
               "--out runs/melt\n"
               "  llmesr train data/beauty --model llmesr --init-from runs/llminit "
               "--set freeze_co=true --out runs/llmesr-residual\n"
               "  llmesr train data/beauty --config tune-id/best.yaml --seed 43 --out runs/t43\n"
               "  llmesr train data/beauty --config runs/no-sd --set alpha=0.5 --out runs/a05\n"
               "\nrun.yaml:\n  model: {model: id, backbone: sasrec, loss: ce, dropout: 0.3}\n"
               "  train: {lr: 0.001, epochs: 100, patience: 10}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("dir", help="dataset directory (with DATA_DIR/semantic/ for llminit/llmesr)")
    _model_flags(tr)
    tr.add_argument("--seed", type=int, help="random seed (default 42)")
    tr.add_argument("--epochs", type=int, help="maximum epochs (default 200)")
    tr.add_argument("--embeddings", help="folder under DATA_DIR/semantic/ (default: the first)")
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run")
    tr.add_argument("--init-from", metavar="RUN",
                    help="--model cities or melt: take the backbone from this finished id "
                         "run (same dataset and architecture) instead of training it; "
                         "--model llmesr: start the collaborative tower from this finished "
                         "llminit or id run (kept as it is with --set freeze_co=true)")
    tr.add_argument("--overwrite", action="store_true", help="start the run directory again")
    tr.add_argument("--quiet", action="store_true")

    ev = sub.add_parser(
        "evaluate", help="recompute a run's test metrics and per-user ranks",
        description="Load a run's best weights and evaluate its test split (and validation) "
                    "again: metrics by long-tail group in RUN_DIR/metrics.json and per-user "
                    "ranks in RUN_DIR/ranks_test_<protocol>.npy. Entries of protocols not "
                    "asked for are kept.",
        epilog="examples:\n  llmesr evaluate runs/llmesr-sasrec\n"
               "  llmesr evaluate runs/llmesr-sasrec --protocol full --exclude-seen\n"
               "  llmesr evaluate runs/llmesr-sasrec --data /new/place/of/beauty",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("run", help="run directory written by 'llmesr train'")
    ev.add_argument("--protocol", default="both", choices=("full", "sampled", "both"),
                    help="full (all items), sampled (100 negatives) or both (default)")
    ev.add_argument("--data", help="the run's dataset directory, if it moved")
    ev.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                    help="full ranking leaves out the history's items (default: as trained)")
    ev.add_argument("--device", help="auto | cpu | cuda (default: the run's setting)")
    ev.add_argument("--json", action="store_true", help="print metrics.json")
    ev.add_argument("--quiet", action="store_true",
                    help="no progress bars (shown when standard error is a terminal)")

    rp = sub.add_parser(
        "report", help="tables, significance tests and plots from finished runs",
        description="Group runs into models (same settings, several seeds) and write "
                    "OUT/report.md and report.csv in the layout of the paper's main table "
                    "(H@10 and N@10 overall, tail/head item, tail/head user; mean ± std over "
                    "seeds), paired t-tests and Wilcoxon tests on per-user metrics against "
                    "--baseline (Holm-corrected), the five-bucket breakdowns by history "
                    "length and item popularity, and plots: groups.png, buckets.png, tsne.png.",
        epilog="examples:\n  llmesr report grid/runs --out grid/report\n"
               "  llmesr report runs/id-* runs/llmesr-* --baseline id --out report",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("runs", nargs="+", help="run directories, or folders of run directories")
    rp.add_argument("--baseline", default=None,
                    help="model (or label) the others are tested against (default id, and "
                         "no tests when no run is an id run; 'none' for no tests)")
    rp.add_argument("--out", default="report", help="output folder (default report)")
    rp.add_argument("--data", help="the runs' dataset directory, if it moved")
    rp.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot")
    rp.add_argument("--tsne-items", type=int, default=3000,
                    help="items in the t-SNE map (a random sample; default 3000)")

    rpr = sub.add_parser(
        "reproduce", help="train a models x backbones x seeds grid, then report it",
        description="Train {id, llminit, llmesr, rlmrec, cities, melt} x "
                    "{sasrec, bert4rec, gru4rec} x seeds "
                    "on a prepared and embedded dataset into OUT/runs/, then write OUT/report/ "
                    "(see 'llmesr report'). Run it again to continue: finished runs are kept, "
                    "interrupted ones resume.",
        epilog="examples:\n  llmesr reproduce data/beauty --seeds 42 43 44 --out grid\n"
               "  llmesr reproduce data/beauty --backbones sasrec --epochs 50 --set patience=5 "
               "--jobs 2 --out grid",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rpr.add_argument("dir", help="dataset directory (with DATA_DIR/semantic/)")
    rpr.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    rpr.add_argument("--models", nargs="+", default=["id", "llminit", "llmesr"])
    rpr.add_argument("--backbones", nargs="+", default=["sasrec", "bert4rec", "gru4rec"])
    rpr.add_argument("--preset", default="default", help="default | paper")
    rpr.add_argument("--epochs", type=int, help="maximum epochs per run (default 200)")
    rpr.add_argument("--set", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                     help="a setting for every run (repeatable), e.g. patience=5")
    rpr.add_argument("--embeddings", help="folder under DATA_DIR/semantic/ (default: the first)")
    rpr.add_argument("--jobs", type=int, default=1,
                     help="runs at a time, each with cores/jobs threads (default 1)")
    rpr.add_argument("--config-dir", metavar="DIR",
                     help="settings per run: DIR/<model>-<backbone>.yaml over the preset (a "
                          "folder, or the name of one packaged with llmesr: beauty-s3rec)")
    rpr.add_argument("--baseline", default="id", help="the report's baseline model")
    rpr.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot")
    rpr.add_argument("--out", required=True, help="output folder")
    rpr.add_argument("--quiet", action="store_true")

    rc = sub.add_parser(
        "recommend", help="top-k items for a history of item ids (JSON out)",
        description="Load a trained run and print the top-k items for a history of raw item "
                    "ids (oldest first) as JSON: ids, scores and titles, the ids the run does "
                    "not know (left out), and a popularity fallback when none is known. "
                    "--batch reads many histories, one JSON list per line, and prints one "
                    "JSON result per line.",
        epilog="examples:\n  llmesr recommend runs/llmesr --history 171,1345,912 -k 5\n"
               "  llmesr recommend runs/llmesr --batch histories.jsonl > top10.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rc.add_argument("run", help="run directory written by 'llmesr train'")
    src = rc.add_mutually_exclusive_group(required=True)
    src.add_argument("--history", help="comma-separated raw item ids, oldest first")
    src.add_argument("--batch", metavar="FILE",
                     help="JSON lines, each a list of item ids ('-' = standard input)")
    rc.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    rc.add_argument("--include-seen", action="store_true",
                    help="allow items of the history in the results")
    rc.add_argument("--new-item-slots", type=int, default=0, metavar="N",
                    help="keep N of the k places for items added after training (default 0)")
    rc.add_argument("--data", help="the run's dataset directory (only for runs trained before "
                                   "llmesr 0.1 wrote serving bundles, when it moved)")
    rc.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")

    ai = sub.add_parser(
        "add-items", help="add items to a trained run by their text (cold start)",
        description="Embed new items with the run's text encoder and prompt template, give "
                    "them a semantic embedding through the trained adapter and a "
                    "collaborative one by the PCA that initialised training, and save them "
                    "with the run (RUN_DIR/added_items/). They can be recommended at once, "
                    "without retraining. FILE holds JSON objects, one per line (or one JSON "
                    "list): an 'id' and the run's text fields (e.g. 'title'), or 'text' (the "
                    "exact text to embed), or 'embedding' (a vector from the run's encoder).",
        epilog='example:\n  echo \'{"id": "NEW-1", "title": "argan oil shampoo"}\' | '
               "llmesr add-items runs/llmesr -",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ai.add_argument("run", help="run directory written by 'llmesr train'")
    ai.add_argument("file", help="items as JSON lines or a JSON list ('-' = standard input)")
    ai.add_argument("--collaborative", default="pca",
                    choices=("pca", "neighbors", "mapped", "zero"),
                    help="collaborative embedding of new items: pca (the projection that "
                         "initialised training; default), neighbors (similarity-weighted mean "
                         "of the 10 trained items closest by text; LLM-ESR runs), mapped "
                         "(least squares onto the trained table) or zero")
    ai.add_argument("--data", help="the run's dataset directory (old runs only, see recommend)")

    sv = sub.add_parser(
        "serve", help="serve a trained run over HTTP (FastAPI)",
        description="An HTTP API for a trained run: POST /recommend, POST /items (cold "
                    "start), GET /items/{id}, GET /health; OpenAPI docs at /docs. It listens "
                    "on 127.0.0.1 unless --host says otherwise (the API has no "
                    "authentication). Concurrent requests are batched into one forward pass.",
        epilog="examples:\n  llmesr serve runs/llmesr\n"
               "  llmesr serve runs/llmesr --port 9000 --max-k 100\n"
               "  curl -s localhost:8000/recommend -H 'content-type: application/json' "
               "-d '{\"history\": [\"171\", \"1345\"], \"k\": 5}'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("run", help="run directory written by 'llmesr train'")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--max-history", type=int, default=1000,
                    help="most items in one history (default 1000)")
    sv.add_argument("--max-k", type=int, default=1000, help="largest k (default 1000)")
    sv.add_argument("--max-batch", type=int, default=256,
                    help="most histories in one request (default 256)")
    sv.add_argument("--max-new-items", type=int, default=1000,
                    help="most items in one POST /items (default 1000)")
    sv.add_argument("--max-body-bytes", type=int, default=1_000_000,
                    help="largest request body (default 1000000)")
    sv.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    sv.add_argument("--threads", type=int, default=1,
                    help="torch threads for the model (default 1: concurrency comes from "
                         "batching requests; 0 = all cores)")
    sv.add_argument("--data", help="the run's dataset directory (old runs only, see recommend)")
    sv.add_argument("--log-level", default="info",
                    choices=("critical", "error", "warning", "info", "debug"))

    tu = sub.add_parser(
        "tune", help="search a model's hyper-parameters with Optuna (validation only)",
        description="Search one model's declared space (lr, weight decay, dropout, hidden, "
                    "max_len, the loss and its parameters; for llmesr also alpha and "
                    "sd_teachers; hidden is fixed by the PCA size for llminit and llmesr) with "
                    "a seeded TPE sampler. The first trial of a new study is the base "
                    "configuration (preset, --config, --set). Each trial "
                    "trains with early stopping on validation full-ranking NDCG@10, reports "
                    "each epoch's value to a median pruner, and never evaluates the test "
                    "split. --trials counts trials that completed or were pruned: give every "
                    "model compared the same budget. The study lives in OUT/study.db: run the "
                    "same command again to continue it, also after a kill (trials a killed "
                    "process left running are failed and queued again). Writes "
                    "OUT/trials/NNNN/ (one run each), OUT/trials.json and OUT/best.yaml for "
                    "'llmesr train --config'. --set fixes a setting (it leaves the space); "
                    "--preset and --config give the base the searched values replace.",
        epilog="examples:\n  llmesr tune data/beauty --model id --backbone sasrec --trials 40 "
               "--epochs 100 --set patience=10 --out tune/id-sasrec\n"
               "  llmesr tune data/beauty --model llmesr --trials 40 --timeout 36000 "
               "--set loss=ce --out tune/llmesr-sasrec\n"
               "  llmesr train data/beauty --config tune/id-sasrec/best.yaml --out runs/id-tuned",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_argument("dir", help="dataset directory (with DATA_DIR/semantic/ for llminit/llmesr)")
    _model_flags(tu, set_help="fix a setting for every trial; it is not searched (repeatable)")
    tu.add_argument("--trials", type=int, required=True,
                    help="budget: trials that complete or are pruned")
    tu.add_argument("--timeout", type=float, metavar="S",
                    help="start no trial after S seconds (the study can be continued)")
    tu.add_argument("--epochs", type=int, help="maximum epochs per trial (default 200)")
    tu.add_argument("--seed", type=int,
                    help="seed of the sampler and of every trial's training (default 42)")
    tu.add_argument("--no-prune", action="store_true", help="train every trial to its end")
    tu.add_argument("--prune-warmup", type=int, default=5, metavar="EPOCHS",
                    help="no pruning up to this epoch (default 5)")
    tu.add_argument("--prune-startup", type=int, default=5, metavar="N",
                    help="no pruning until N trials have finished (default 5)")
    tu.add_argument("--embeddings", help="folder under DATA_DIR/semantic/ (default: the first)")
    tu.add_argument("--out", required=True, help="study folder")
    tu.add_argument("--quiet", action="store_true", help="no progress lines")

    sw = sub.add_parser(
        "sweep", help="train one setting's values x seeds and plot the test metrics",
        description="Train the model for every value of one setting (--set-grid) and every "
                    "seed into OUT/runs/<setting>=<value>-seed<seed>/, then write "
                    "OUT/sweep.json (test full-ranking HR@10 and NDCG@10, overall and by "
                    "long-tail group: each seed, mean and std) and OUT/sweep.png (those "
                    "against the value, mean ± std). Run it again to continue: finished runs "
                    "are kept, interrupted ones resume. The other settings: --preset, then "
                    "--config, then --set, as 'llmesr train'.",
        epilog="examples (the paper's alpha and N figure):\n"
               "  llmesr sweep data/yelp --model llmesr --set-grid alpha=0,0.01,0.05,0.1,0.5,1 "
               "--seeds 42 43 44 --out sweep/alpha\n"
               "  llmesr sweep data/yelp --set-grid sd_teachers=1,5,10,20 --seeds 42 43 44 "
               "--out sweep/teachers",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("dir", help="dataset directory (with DATA_DIR/semantic/ for llminit/llmesr)")
    sw.add_argument("--set-grid", required=True, metavar="KEY=V1,V2,...",
                    help="the setting to sweep and its values")
    sw.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44],
                    help="seeds of every value (default 42 43 44)")
    _model_flags(sw, set_help="a setting for every run (repeatable)")
    sw.add_argument("--epochs", type=int, help="maximum epochs per run (default 200)")
    sw.add_argument("--embeddings", help="folder under DATA_DIR/semantic/ (default: the first)")
    sw.add_argument("--jobs", type=int, default=1,
                    help="runs at a time, each with cores/jobs threads (default 1)")
    sw.add_argument("--out", required=True, help="output folder")
    sw.add_argument("--quiet", action="store_true")

    ds = sub.add_parser("datasets", help="list the named datasets and the input formats")
    ds.add_argument("--json", action="store_true")

    demo = sub.add_parser(
        "demo", help="run the end-to-end demo on MovieLens 100K",
        description="Get MovieLens 100K, prepare it, print its long-tail statistics, embed "
                    "its movies and users with the bundled text encoder, train SASRec with "
                    "and without LLM-ESR (default preset, seed 42), print the test metrics "
                    "by long-tail group and save them as a plot (OUT/groups.png).")
    demo.add_argument("--source", help="a local MovieLens 100K folder (GroupLens 'ml-100k' "
                      "with u.data, or RecBole files ml-100k.inter/.item); default: fetch it")
    demo.add_argument("--cache-dir", help="download folder (default $LLMESR_CACHE or "
                      "~/.cache/llmesr)")
    demo.add_argument("--out", default="demo_out", help="working directory (default demo_out)")
    demo.add_argument("--epochs", type=int, default=20,
                      help="epoch budget per model (default 20; early stopping, patience 5)")
    return p


def _model_flags(p: argparse.ArgumentParser,
                 set_help: str = "any model or training setting (repeatable)") -> None:
    """--model, --backbone, --preset, --config and --set, shared by train, tune and sweep."""
    p.add_argument("--model", help="id | llminit | llmesr | rlmrec | cities | melt (default: "
                   "the --config file's, else llmesr)")
    p.add_argument("--backbone", help="sasrec | bert4rec | gru4rec (default: the --config "
                   "file's, else sasrec)")
    p.add_argument("--preset", help="default (bugs fixed) | paper (the original code's "
                   "behaviour); default: the --config file's 'preset:', else default")
    p.add_argument("--config", metavar="FILE", help="YAML/JSON settings over the preset (a "
                   "run directory: its config.yaml or config.json)")
    p.add_argument("--set", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help=set_help)


def _settings(args: argparse.Namespace, prefix: str, flags: list, cls: type) -> dict[str, Any]:
    out = {}
    for _flag, dest, _h in flags:
        value = getattr(args, f"{prefix}{dest}")
        if value is not None:
            out[dest] = coerce(cls, dest, value)
    return out


def cmd_prepare(args: argparse.Namespace) -> int:
    from llmesr.api import Dataset

    options = dict(args.option)
    table_opts = {dest: getattr(args, f"tbl_{dest}") for _f, dest, _h in _TABLE_FLAGS
                  if getattr(args, f"tbl_{dest}") is not None}
    if table_opts and args.name != "table":
        raise LlmesrError(f"{', '.join('--' + k.replace('_', '-') for k in table_opts)} only "
                          "apply to 'prepare table'; use -o KEY=VALUE for other formats")
    options.update(table_opts)
    ds = Dataset.prepare(args.name, args.out, source=args.source, items=args.items,
                         options=options, download=args.download, cache_dir=args.cache_dir,
                         overwrite=args.overwrite, progress=not args.quiet,
                         **_settings(args, "prep_", _PREP_FLAGS, PrepareConfig),
                         **_settings(args, "lt_", _LT_FLAGS, LongTailConfig))
    if not args.quiet:
        print(format_info(ds.manifest))
    return 0


def format_info(m: dict[str, Any]) -> str:
    """Human-readable statistics of a dataset manifest."""
    c, g, t = m["counts"], m["groups"], m["text"]
    lines = [
        f"dataset      {m['name']}  (reader {m['reader']['name']}, llmesr {m['llmesr_version']})",
        f"users        {c['users']:,}   evaluated {c['evaluated_users']:,}"
        f"   with < 3 interactions {c['users_under_3']:,}",
        f"items        {c['items']:,}",
        f"interactions {c['interactions']:,}   history length mean {c['mean_length']:.2f}, "
        f"min {c['min_length']}, max {c['max_length']}   sparsity {100 * c['sparsity']:.3f}%",
        f"order        {m['order_applied']}   repeated (user, item) pairs "
        f"{c['repeated_pairs']:,}   timestamps {'yes' if c['has_timestamps'] else 'no'}",
        f"thresholds   ts_user = {g['ts_user']} ({g['threshold_source']['ts_user']}), "
        f"ts_item = {g['ts_item']} ({g['threshold_source']['ts_item']}), "
        f"popularity = {g['popularity']}",
        f"test cases   {g['test_cases']:,}",
        f"  tail users {g['tail_user']:,} ({100 * g['tail_user_share']:.1f}%)   head users "
        f"{g['head_user']:,}",
        f"  tail items {g['tail_item']:,} ({100 * g['tail_item_case_share']:.1f}%)   head items "
        f"{g['head_item']:,}",
        f"catalogue    {g['tail_items']:,} tail items ({100 * g['tail_items_share']:.1f}% of "
        f"items) hold {100 * g['tail_items_popularity_share']:.1f}% of the popularity mass",
        f"text         fields {', '.join(t['fields']) or '(none)'}; items with text "
        f"{t['items_with_any_text']:,} / {c['items']:,}",
    ]
    for step in m.get("filter_log", []):
        lines.append(f"  {step['step']:<55} {step['users']:>9,} users {step['items']:>9,} "
                     f"items {step['interactions']:>11,} interactions")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from llmesr.data.artifact import load_dataset

    ds = load_dataset(args.dir, verify=args.verify)
    if args.json:
        print(json.dumps(ds.manifest, indent=2))
    else:
        print(format_info(ds.manifest))
        if args.verify:
            print("checksums    all files match manifest.json")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from llmesr.data.readers import _registry
    from llmesr.data.registry import ENTRIES

    if args.json:
        print(json.dumps({"datasets": {n: {"reader": e.reader, "summary": e.summary,
                                           "download": list(e.download)}
                                       for n, e in ENTRIES.items()},
                          "formats": {n: s.summary for n, s in _registry().items()}}, indent=2))
        return 0
    print("datasets (llmesr prepare NAME --out DIR [--source PATH]):")
    for n, e in ENTRIES.items():
        print(f"  {n:<20} {e.summary}")
    print("\nformats (llmesr prepare FORMAT --source PATH [--items PATH] [-o key=value] ...):")
    for n, s in _registry().items():
        print(f"  {n:<20} {s.summary}  [options: {', '.join(s.options()) or 'none'}]")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from llmesr.api import Dataset

    # strings: make_encoder converts each to its option's type and refuses unknown keys
    from llmesr import distributed as ddp

    options: dict[str, Any] = dict(args.encoder_opt)
    # under torchrun: each process embeds a share of the texts into the shared cache
    ddp.init_from_env(str(options.get("device", "auto")))
    try:
        Dataset.load(args.dir).embed(
            args.encoder, encoder_options=options, domain=args.domain, style=args.style,
            fields=dict(args.field), item_template=args.item_template, pca_dim=args.pca_dim,
            neighbors=args.neighbors, backend=args.backend, users=not args.no_users,
            cache_dir=args.cache_dir, progress=not args.quiet)
    finally:
        ddp.shutdown()
    return 0


def cmd_import_authors(args: argparse.Namespace) -> int:
    from llmesr.semantic.authors import import_authors_files

    m = import_authors_files(args.dir, args.source, allow_pickle=args.allow_pickle,
                             name=args.name, overwrite=args.overwrite)
    print(json.dumps({k: m[k] for k in ("encoder", "counts") if k in m}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from llmesr.models.config import build_configs
    from llmesr.training.trainer import Trainer

    overrides = dict(args.set)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    from llmesr import distributed as ddp

    mcfg, tcfg = build_configs(args.preset, args.backbone, args.model, overrides,
                               config=args.config)
    # under torchrun: join the process group (DDP; rank 0 writes the run directory)
    ddp.init_from_env(tcfg.device)
    try:
        trainer = Trainer(args.dir, mcfg, tcfg, args.out, embeddings=args.embeddings,
                          resume=args.resume, overwrite=args.overwrite,
                          progress=not args.quiet, init_from=args.init_from,
                          log=(lambda *a, **k: None) if args.quiet else print)
        if trainer.world > 1:
            trainer.log(f"distributed: {trainer.world} processes "
                        f"({'nccl' if trainer.device.type == 'cuda' else 'gloo'}), global batch "
                        f"{tcfg.batch_size}")
        metrics = trainer.fit()
        if not args.quiet and trainer.rank == 0:
            print(format_metrics(metrics))
    finally:
        ddp.shutdown()
    return 0


def _quiet_or_print(args: argparse.Namespace):
    return (lambda *a, **k: None) if args.quiet else print


def cmd_tune(args: argparse.Namespace) -> int:
    import shlex

    from llmesr.training.tune import tune

    summary = tune(args.dir, args.out, model=args.model, backbone=args.backbone,
                   trials=args.trials, timeout=args.timeout, preset=args.preset,
                   overrides=dict(args.set), config=args.config, epochs=args.epochs,
                   embeddings=args.embeddings, seed=args.seed, prune=not args.no_prune,
                   prune_warmup=args.prune_warmup, prune_startup=args.prune_startup,
                   command="llmesr " + shlex.join(sys.argv[1:]), log=_quiet_or_print(args))
    best = summary["best"]
    if not args.quiet:
        print(f"{summary['complete']} trials complete, {summary['pruned']} pruned, "
              f"{summary['fail']} failed (budget {summary['budget']})")
        if best is not None:
            print(f"best: trial #{best['number']:04d}, valid NDCG@10 {best['value']:.4f}; "
                  f"settings in {Path(args.out) / 'best.yaml'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from llmesr.training.sweep import parse_grid, sweep

    param, values = parse_grid(args.set_grid)
    result = sweep(args.dir, args.out, param=param, values=values, seeds=args.seeds,
                   model=args.model, backbone=args.backbone, preset=args.preset,
                   overrides=dict(args.set), config=args.config, epochs=args.epochs,
                   embeddings=args.embeddings, jobs=args.jobs, progress=not args.quiet,
                   log=_quiet_or_print(args))
    if not args.quiet:
        overall = result["results"]["overall"]
        print(f"{param:>14}  test HR@10 (mean ± std)  NDCG@10")
        for i, v in enumerate(values):
            hr, nd = overall["HR@10"], overall["NDCG@10"]
            print(f"{v:>14}  {hr['mean'][i]:.4f} ± {hr['std'][i]:.4f}     "
                  f"{nd['mean'][i]:.4f} ± {nd['std'][i]:.4f}")
    return 0


def format_metrics(m: dict[str, Any]) -> str:
    """The test metrics as a small table: protocol x group, HR@10 and NDCG@10."""
    lines = [f"best epoch {m['best_epoch']} of {m['epochs']}, {m['train_seconds']:.0f} s of "
             "training"]
    groups = ["overall", "tail_item", "head_item", "tail_user", "head_user"]
    lines.append(f"{'protocol':<9}" + "".join(f"{g:>20}" for g in groups))
    for protocol, res in m["test"].items():
        cells = "".join(f"{res[g]['HR@10']:>9.4f} /{res[g]['NDCG@10']:>8.4f} " for g in groups)
        lines.append(f"{protocol:<9}{cells}")
    lines.append("(HR@10 / NDCG@10; counts: " + ", ".join(
        f"{g} {n}" for g, n in next(iter(m["test"].values()))["counts"].items()) + ")")
    beyond = m.get("beyond", {}).get("full")
    if beyond:
        lines.append("top-10 lists (full ranking): coverage / tail-item share / average "
                     "recommended popularity")
        lines.append(f"{'full':<9}" + "".join(
            f"{beyond[g]['coverage@10']:.3f} / {beyond[g]['tail_share@10']:.3f} / "
            f"{beyond[g]['ARP@10']:.0f} ".rjust(20) for g in groups))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from llmesr.training.trainer import evaluate_run

    protocols = ("full", "sampled") if args.protocol == "both" else (args.protocol,)
    metrics = evaluate_run(args.run, protocols, data_dir=args.data, device=args.device,
                           exclude_seen=args.exclude_seen,
                           progress=not args.quiet and sys.stderr.isatty())
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


def _json_records(path: str, what: str) -> list[Any]:
    """A JSON list, or JSON lines (one value per line), from a file or '-' (stdin)."""
    name = "standard input" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        p = Path(path)
        if p.is_dir():
            raise LlmesrError(f"{path} is a folder; give a file of JSON lines (or '-' for "
                              "standard input)")
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise LlmesrError(f"{path}: no such file") from None
        except OSError as e:
            raise LlmesrError(f"cannot read {path} ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LlmesrError(f"{name} line {line}: not valid UTF-8 text ({e.reason} at byte "
                          f"{e.start}); save the file as UTF-8") from None
    try:       # one JSON list of records (objects, or lists for histories)
        whole = json.loads(text)
        if isinstance(whole, list) and whole and all(
                isinstance(r, dict if what == "items" else list) for r in whole):
            return whole
    except (json.JSONDecodeError, RecursionError):
        pass
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LlmesrError(f"{name} line {n}: not valid JSON ({e.msg}); give one "
                              f"{ {'items': 'item', 'histories': 'history'}[what]} per line") from None
        except RecursionError:
            raise LlmesrError(f"{name} line {n}: JSON nested too deeply") from None
    if not out:
        raise LlmesrError(f"{name} holds no {what}")
    return out


def cmd_recommend(args: argparse.Namespace) -> int:
    from llmesr.serving import Recommender

    if args.k < 1:
        raise LlmesrError("-k must be at least 1")
    if args.history is not None:
        histories = [[i.strip() for i in args.history.split(",") if i.strip()]]
    else:
        histories = _json_records(args.batch, "histories")
        for n, h in enumerate(histories, 1):
            if not isinstance(h, list):
                raise LlmesrError(f"{args.batch} line {n}: a history is a JSON list of ids")
    rec = Recommender.load(args.run, device=args.device, data_dir=args.data)
    results = rec.recommend_batch(histories, args.k, not args.include_seen,
                                  args.new_item_slots)
    try:
        if args.history is not None:
            print(json.dumps(results[0].to_dict(), indent=2, ensure_ascii=False))
        else:
            for r in results:
                print(json.dumps(r.to_dict(), ensure_ascii=False))
        sys.stdout.flush()
    except BrokenPipeError:          # the reader stopped early (| head): no traceback
        import os

        try:                         # nor one when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    return 0


def cmd_add_items(args: argparse.Namespace) -> int:
    from llmesr.serving import Recommender

    items = _json_records(args.file, "items")
    rec = Recommender.load(args.run, data_dir=args.data)
    added = rec.add_items(items, args.collaborative)
    print(f"added {len(added):,} item(s) to {args.run}; it now has {rec.num_items:,} items "
          f"({rec.num_added:,} added)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from llmesr.serving.app import Limits, serve

    limits = Limits(max_history=args.max_history, max_k=args.max_k, max_batch=args.max_batch,
                    max_new_items=args.max_new_items, max_body_bytes=args.max_body_bytes)
    for name, value in vars(limits).items():
        if value < 1:
            raise LlmesrError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.port < 65536:
        raise LlmesrError("--port must be between 1 and 65535")
    if args.threads < 0:
        raise LlmesrError("--threads must be 0 (all cores) or more")
    if args.data:
        from llmesr.serving.bundle import load_bundle

        load_bundle(args.run, args.data)
    serve(args.run, args.host, args.port, limits=limits, device=args.device,
          threads=args.threads or None, log_level=args.log_level)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from llmesr.evaluation.report import write_report

    named = args.baseline is not None       # a baseline the user named must be there
    baseline = None if named and args.baseline.lower() == "none" else (args.baseline or "id")
    write_report(args.runs, args.out, baseline=baseline, data_dir=args.data,
                 tsne=not args.no_tsne, tsne_items=args.tsne_items, require_baseline=named,
                 log=lambda msg: print(f"llmesr: note: {msg}", file=sys.stderr))
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"written: {args.out}/report.md, report.csv, report.json, groups.png, buckets.png"
          + ("" if args.no_tsne else ", tsne.png"))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from llmesr.training.grid import reproduce

    baseline = None if args.baseline.lower() == "none" else args.baseline
    reproduce(args.dir, args.out, seeds=args.seeds, models=args.models,
              config_dir=args.config_dir, backbones=args.backbones, preset=args.preset,
              epochs=args.epochs,
              overrides=dict(args.set), embeddings=args.embeddings, jobs=args.jobs,
              baseline=baseline, tsne=not args.no_tsne, progress=not args.quiet,
              log=(lambda *a, **k: None) if args.quiet else print)
    print((Path(args.out) / "report" / "report.md").read_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llmesr.data.artifact import load_dataset
    from llmesr.data.fetch import movielens_100k
    from llmesr.data.pipeline import prepare
    from llmesr.data.registry import ENTRIES

    if args.source:
        src = Path(args.source)
        if (src / "u.data").is_file():
            name = "movielens-100k"
        elif (src / "ml-100k.inter").is_file():
            name = "ml-100k"
        else:
            raise LlmesrError(f"{src} holds neither u.data (GroupLens) nor ml-100k.inter "
                              "(RecBole)")
    else:
        name, src = movielens_100k(Path(args.cache_dir) if args.cache_dir else None)
    out = Path(args.out) / "ml-100k"
    # The same recipe whichever copy was found: all ratings, ordered by timestamp.
    prepare(name, out, source=src, settings=dict(ENTRIES["ml-100k"].prepare), overwrite=True)
    ds = load_dataset(out)
    print(format_info(ds.manifest))

    import numpy as np

    from llmesr.semantic.pipeline import embed
    from llmesr.semantic.prompts import PromptConfig

    print("\nembedding movie texts and user histories with the bundled all-MiniLM-L6-v2 ...")
    title = "movie_title" if "movie_title" in ds.item_table.columns else "title"
    date = {"date": "release_year"} if "release_year" in ds.item_table.columns else {}
    m = embed(out, prompt=PromptConfig(domain="movie", fields={"title": title, **date}),
              pca_dim=min(64, ds.num_items), cache_dir=Path(args.out) / "embedding-cache")
    folder = out / "semantic" / next(p.name for p in (out / "semantic").iterdir()
                                     if (p / "manifest.json").is_file())
    items = np.load(folder / "items.npy")
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    titles = ds.item_table[title].astype(str).tolist()
    print(f"\nitems {items.shape[0]:,} x {items.shape[1]}, users {m['dataset']['users']:,}; "
          "nearest movies by text embedding:")
    for query in range(3):
        sims = items @ items[query]
        sims[query] = -np.inf
        near = ", ".join(titles[j] for j in np.argsort(-sims)[:4])
        print(f"  {titles[query]:<28} -> {near}")

    from llmesr.evaluation.report import group_bars, group_table
    from llmesr.models.config import build_configs
    from llmesr.training.trainer import Trainer

    if args.epochs < 1:
        raise LlmesrError("--epochs must be at least 1")
    results = {}
    for model, label in (("id", "SASRec"), ("llmesr", "SASRec + LLM-ESR")):
        print(f"\ntraining {label} (default preset, seed 42, at most {args.epochs} epochs, "
              "patience 5) ...")
        mcfg, tcfg = build_configs("default", "sasrec", model,
                                   {"epochs": str(args.epochs), "patience": "5", "seed": "42",
                                    # a catalogue under 64 items gets a smaller PCA and model
                                    "hidden": str(min(64, ds.num_items))})
        results[label] = Trainer(out, mcfg, tcfg, Path(args.out) / f"run-{model}",
                                 overwrite=True).fit()
    print("\ntest metrics on MovieLens 100K (full ranking and 100 sampled negatives):\n")
    print(group_table(results))
    plot = group_bars(results, Path(args.out) / "groups.png",
                      title="MovieLens 100K, SASRec: HR@10 by long-tail group")
    print(f"\nplot: {plot}\nruns: {Path(args.out) / 'run-id'}, {Path(args.out) / 'run-llmesr'}")

    from llmesr.serving import Recommender

    rec = Recommender.load(Path(args.out) / "run-llmesr")
    raw = ds.item_table["raw_id"].astype(str).to_numpy()
    history = raw[ds.sequence(1)[:-1] - 1].tolist()
    print(f"\nserving (llmesr recommend / serve): user 1 watched {len(history)} movies, lately "
          + "; ".join(t for t in (rec.item(i)["title"] for i in history[-3:]) if t))
    for r in rec.recommend(history, k=5).to_dict()["items"]:
        print(f"  {r['score']:6.2f}  {r['title']}")
    rec.add_items([{"id": "new-movie", title: "Toy Story 4 (2019)"}], persist=False)
    top = rec.recommend(history, k=5, new_item_slots=1)
    print("a movie added by its title (cold start), with one of 5 places kept for new items: "
          f"{top.titles[top.ids.index('new-movie')]} at place {top.ids.index('new-movie') + 1}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"prepare": cmd_prepare, "info": cmd_info, "datasets": cmd_datasets,
                "embed": cmd_embed, "import-authors": cmd_import_authors, "train": cmd_train,
                "evaluate": cmd_evaluate, "report": cmd_report, "reproduce": cmd_reproduce,
                "demo": cmd_demo, "recommend": cmd_recommend, "add-items": cmd_add_items,
                "serve": cmd_serve, "tune": cmd_tune, "sweep": cmd_sweep}
    try:
        if args.command not in ("train", "embed"):
            from llmesr import distributed as ddp

            if ddp.launched():
                raise LlmesrError(f"'llmesr {args.command}' runs in one process; of the "
                                  "commands only train and embed run under torchrun")
        return handlers[args.command](args)
    except LlmesrError as e:
        print(f"llmesr: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"llmesr: error: file not found: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmesr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
