"""Model and training settings, and the two presets.

``paper`` reproduces the original code's behaviour, result-changing quirks included (SPEC §5,
§9.1). ``default`` fixes the bugs (causal attention, padded keys masked, GRU padding masked,
causal cross-attention) and trains with the objective that holds up under full ranking
(full-softmax CE, dropout 0.2, chosen on validation); the other hyper-parameters are the
paper's. The dataclass defaults are the paper's values. Every difference is a named field
below.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmesr.config import (Bool, Choice, Choices, Float, Int, Setting, Str, check_settings,
                           read_settings_file, unknown_setting, write_text_atomic)
from llmesr.errors import LlmesrError

MODELS = ("id", "llminit", "llmesr", "rlmrec", "cities", "melt")
BACKBONES = ("sasrec", "bert4rec", "gru4rec")
LOSSES = ("bce", "ce", "sampled_ce", "gbce")   # see llmesr.models.losses
SAMPLERS = ("uniform", "popularity", "in_batch")


@dataclass
class ModelConfig:
    #: id (plain backbone) | llminit (ID table from PCA of LLM embeddings) | llmesr |
    #: rlmrec (the plain backbone with RLMRec-Con's profile alignment, llmesr.models.rlmrec) |
    #: cities (the plain backbone, then its tail items' rows inferred from their contexts,
    #: llmesr.models.cities) | melt (the plain backbone, then MELT's user and item branches
    #: with its curriculum, llmesr.models.melt)
    model: str = "llmesr"
    #: sasrec | bert4rec | gru4rec
    backbone: str = "sasrec"
    hidden: int = 64
    #: transformer blocks (SASRec/Bert4Rec: 2) or GRU layers (1)
    layers: int = 2
    heads: int = 1
    dropout: float = 0.5
    max_len: int = 200
    #: SASRec attends only to the past. The paper's code commented the mask out (§9.1.1).
    causal: bool = True
    #: padded keys get no attention. The paper's MHA had no key-padding mask (§9.1.8).
    mask_padded_keys: bool = True
    #: the GRU ignores padded steps. The paper's GRU ran over the padding (§9.1.7).
    gru_mask_padding: bool = True
    #: the cross-attention attends only to the past (needed for a causal SASRec). The paper's
    #: cross-attention had no causal mask (§9.1.1).
    causal_cross_attention: bool = True
    # ---- LLM-ESR parts (model = llmesr) --------------------------------------------------
    use_co_view: bool = True
    use_se_view: bool = True
    use_cross_attention: bool = True
    #: one encoder for both views (the paper); False = "w/o Share" ablation
    share_encoder: bool = True
    #: adapter depth: 2 = Linear(D, D/2) -> Linear(D/2, hidden) (the paper), 1 = one Linear
    adapter_layers: int = 2
    #: a ReLU between the adapter's layers (the paper has none: §9.1.2)
    adapter_activation: bool = False
    #: collaborative table init: pca (the paper) | random ("Random Init" ablation)
    co_init: str = "pca"
    #: keep the LLM table frozen (the paper); False = the appendix's "w/o freeze"
    freeze_semantic: bool = True
    #: residual connection around the cross-attention (the paper: none, §9.1.3)
    cross_attention_residual: bool = False
    #: self-distillation weight (0 = "w/o SD") and number of teacher users
    alpha: float = 0.1
    sd_teachers: int = 10
    #: run the teachers with dropout on (the paper, §9.1.13). Off by default: the teachers
    #: are targets, and dropout only adds noise to them (and cost: drawing the attention
    #: dropout masks of B * K sequences makes their forward pass slower on CPU).
    teacher_dropout: bool = False
    #: reuse the teachers' states (not in the paper): 0 = exact, each step's teachers run
    #: with the step's weights (the paper); -1 = every user's state computed once at the
    #: start of each epoch and looked up; K > 0 = the same, recomputed every K steps too.
    #: One pass over the users replaces B * K teacher histories a step.
    teacher_cache: int = 0
    #: simulated cold start (not in the paper): in training, each lookup of an item's
    #: collaborative row is replaced by its PCA initialisation with this probability, so the
    #: model learns to score items whose row never trained (items added later by text).
    #: 0 = off. Needs co_init = pca.
    co_dropout: float = 0.0
    #: weight of each view's own loss (the co half of the user state against the ID rows
    #: alone, the se half against the adapter's rows alone), added to the joint loss; 0 =
    #: off (the paper: one loss on the concatenated score)
    view_aux_loss: float = 0.0
    #: popularity gate on the semantic view (not in the paper): each item's semantic row is
    #: scaled by g_i = softplus(a + b * log(1 + n_i)), n_i its count among the training
    #: targets, a and b learnt from g = 1; with b < 0 the model leans on the text for rare
    #: items. False = off (the paper)
    se_pop_gate: bool = False
    #: a learnt weight w = exp(v), from 1, on the semantic part of the joint score only:
    #: u_co·e_co + w u_se·e_se. The view's own loss (view_aux_loss) keeps w out, so the
    #: semantic tower can be scaled for its own loss and weighted for the sum apart (not in
    #: the paper). False = off
    se_sum_weight: bool = False
    #: the collaborative tower frozen (not in the paper): the ID table, its encoder and the
    #: positions keep the values they start from (``train --init-from`` a finished llminit or
    #: id run), so only the semantic tower (and w) trains, on what the frozen score leaves:
    #: the joint score is the other run's plus a learnt semantic term. Needs the two views
    #: in their own encoders without cross-attention. False = off
    freeze_co: bool = False
    #: rlmrec: weight λ of the profile-alignment loss and its temperature τ (the official
    #: configs' ranges: λ 1e-3..1e-1, τ 0.1..1; LightGCN on Amazon/Yelp: 0.01 and 0.2)
    rlmrec_weight: float = 0.01
    rlmrec_tau: float = 0.2
    # ---- CITIES (model = cities; llmesr.models.cities) --------------------------------------
    #: the method's own head/tail split for training F: head = more than this many training
    #: occurrences (the official code: 5); evaluation keeps the dataset's groups
    cities_head_count: int = 5
    #: contexts per item while training F: K ~ U{1..this} a batch (official: 10)
    cities_max_shots: int = 10
    #: F's epochs at most, its early-stopping patience (validation MSE) and learning rate.
    #: The official code: 10^5 epochs, patience 10, lr 1e-4 (on a GPU). An epoch of F costs
    #: about 45 s on one CPU thread on beauty-s3rec, and at 1e-4 F is far from converged
    #: after tens of epochs: the defaults trade that for 1e-3 and a short budget.
    cities_epochs: int = 20
    cities_patience: int = 3
    cities_lr: float = 1e-3
    #: the sinusoidal positions as intended (the official code's divisor bug: False)
    cities_pe_fix: bool = True
    #: infer with F's best epoch (the official code keeps the last one: False)
    cities_restore_best: bool = True
    #: rescale each inferred row to the norm of the row it replaces (ours, not in CITIES: the
    #: MSE-trained F shrinks rows toward the mean, and a dot product then ranks them low)
    cities_match_norm: bool = False
    # ---- MELT (model = melt; llmesr.models.melt) --------------------------------------------
    #: stage 2's epochs, all run (the curriculum moves with epoch / melt_epochs); the best
    #: on validation is kept. The official Beauty script: 180 (the paper preset)
    melt_epochs: int = 20
    #: stop stage 2 once this many epochs in a row bring no better validation NDCG@10 (the
    #: curriculum still runs on the melt_epochs schedule, so stopping changes nothing before
    #: the stop); 0: every epoch runs, as the official code. The default preset: 5
    melt_patience: int = 0
    #: the Pareto quantile of the method's own head/tail split (official: 0.8 on Amazon,
    #: 0.5 elsewhere); evaluation keeps the dataset's groups
    melt_pareto: float = 0.8
    #: weights λ_u, λ_i of the user and item branches (the official README, Beauty + SASRec)
    melt_lambda_u: float = 0.1
    melt_lambda_i: float = 0.4
    #: train W_U as the residual f + W_U f it is used as (started at zero, so the residual
    #: starts as the identity), and use it in the tail-item update (the official code: a
    #: direct map from a random start in training, no W_U in the update: False)
    melt_wu_residual: bool = True
    #: contexts end with the item itself (the official code: True); off, they end just
    #: before it, so an item's estimate comes from the items around it, not its own row
    melt_context_self: bool = False
    #: before stage 2, fit W_I by least squares from the head items' context means to their
    #: rows, so that the first tail-item update (before the first epoch) is not made with a
    #: random W_I, which overwrites most rows with noise (the official code: False)
    melt_warm_update: bool = True
    #: replace the tail items' rows at each epoch's start (MELT's item-to-user transfer);
    #: off only for ablations
    melt_tail_update: bool = True
    #: item regularisation (SPEC §4.8; off in the paper's scripts)
    item_reg: bool = False
    beta: float = 0.1
    # ---- loss ------------------------------------------------------------------------------
    #: the objective (llmesr.models.losses names each one's source): bce (the paper: one
    #: negative per target) | ce (full softmax over the catalogue) | sampled_ce (sampled
    #: softmax) | gbce (gSASRec's generalised BCE)
    loss: str = "bce"
    #: negatives per batch for sampled_ce and gbce (shared by the batch's positions)
    sampled_negatives: int = 256
    #: how sampled_ce/gbce draw negatives: uniform | popularity (proportional to the item's
    #: count among training interactions) | in_batch (the batch's own targets; sampled_ce only)
    negative_sampler: str = "uniform"
    #: sampled_ce: subtract log(M Q(item)) from every logit (Yi et al. 2019); a constant, so
    #: no change, for the uniform sampler
    logq_correction: bool = True
    #: gbce: calibration t in [0, 1] (gSASRec: 0.75 with 256 negatives; 0 = BCE)
    gbce_t: float = 0.75
    #: Bert4Rec masking probability (the paper's scripts: 0.6)
    mask_prob: float = 0.6

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "ModelConfig":
        check_settings(self, MODEL_FIELDS)      # each field's type and range (the table)
        if self.model == "llmesr" and not (self.use_co_view or self.use_se_view):
            raise LlmesrError("LLM-ESR needs at least one of use_co_view / use_se_view")
        if self.co_dropout and (self.model in ("id", "rlmrec", "cities", "melt")
                                or self.co_init != "pca"):
            raise LlmesrError("co_dropout replaces collaborative rows by their PCA "
                              "initialisation: it needs model llminit or llmesr with co_init=pca")
        if self.freeze_co and self.model == "llmesr" and not (
                self.dual and not self.share_encoder and not self.use_cross_attention):
            raise LlmesrError("freeze_co freezes the collaborative tower: it needs both views "
                              "(use_co_view, use_se_view), share_encoder=false and "
                              "use_cross_attention=false")
        if self.hidden % self.heads:
            raise LlmesrError("hidden must be divisible by heads")
        if self.loss == "gbce" and self.negative_sampler == "in_batch":
            raise LlmesrError("gbce calibrates for negatives drawn from the catalogue: use "
                              "negative_sampler=uniform or popularity")
        return self

    @property
    def dual(self) -> bool:
        return self.model == "llmesr" and self.use_co_view and self.use_se_view

    @property
    def co_frozen(self) -> bool:
        """freeze_co in effect (LLM-ESR with both views; inert for the other models)."""
        return self.dual and self.freeze_co


#: settings that change nothing for some models (the dual view's, the self-distillation's,
#: RLMRec's): runs that differ only in these are the same model (llmesr report)
_DUAL_ONLY = ("use_co_view", "use_se_view", "use_cross_attention", "share_encoder",
              "adapter_layers", "adapter_activation", "co_init", "freeze_semantic",
              "cross_attention_residual", "causal_cross_attention", "alpha", "sd_teachers",
              "teacher_dropout", "teacher_cache", "view_aux_loss", "se_pop_gate",
              "se_sum_weight", "freeze_co", "item_reg", "beta")
_RLMREC_ONLY = ("rlmrec_weight", "rlmrec_tau")
_CITIES_ONLY = ("cities_head_count", "cities_max_shots", "cities_epochs", "cities_patience",
                "cities_lr", "cities_pe_fix", "cities_restore_best", "cities_match_norm")
_MELT_ONLY = ("melt_epochs", "melt_patience", "melt_pareto", "melt_lambda_u", "melt_lambda_i",
              "melt_wu_residual", "melt_context_self", "melt_warm_update",
              "melt_tail_update")


def inert_settings(model: str) -> frozenset[str]:
    """The ModelConfig fields that have no effect on ``model``."""
    inert = set(_RLMREC_ONLY) if model != "rlmrec" else set()
    if model != "cities":
        inert.update(_CITIES_ONLY)
    if model != "melt":
        inert.update(_MELT_ONLY)
    if model != "llmesr":
        inert.update(_DUAL_ONLY)
    if model in ("id", "rlmrec", "cities", "melt"):
        inert.add("co_dropout")
    return frozenset(inert)


@dataclass
class TrainConfig:
    lr: float = 1e-3
    #: Adam's L2 penalty on every trained parameter (0 = none, the paper)
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    #: stop after this many epochs without a strictly better validation NDCG@10
    patience: int = 20
    seed: int = 42
    #: validation protocol for early stopping: sampled (the paper: 100 negatives, redrawn
    #: every epoch) | full (all items)
    valid_protocol: str = "full"
    #: redraw the sampled negatives at every evaluation (the paper) or fix them per seed
    resample_negatives: bool = False
    #: ties between the target and a candidate: pessimistic (counted against the target) |
    #: optimistic
    ties: str = "pessimistic"
    #: full ranking leaves out the items of the user's input history (the target stays a
    #: candidate even when it was seen before). auto (the default preset): on when no user
    #: has an item twice in the dataset -- then a seen item is never a target, the history is
    #: what serving leaves out too, and the ranking is RecBole's full-sort one -- and off when
    #: repeats occur (a repeat purchase is a legitimate recommendation). The paper preset: off.
    exclude_seen: bool | str = "auto"
    eval_batch_size: int = 1024
    #: auto | cpu | cuda
    device: str = "auto"
    #: bf16 autocast on CUDA
    amp: bool = True
    #: evaluate on the test split after training with these protocols
    test_protocols: tuple[str, ...] = ("full", "sampled")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        check_settings(self, TRAIN_FIELDS)      # each field's type and range (the table)
        return self


# ---- the type and range of every field: the one check behind --set, --config and Python ------
# One line per field; a field missing here fails tests/models/test_config.py.
MODEL_FIELDS: dict[str, Setting] = {
    "model": Choice(*MODELS),
    "backbone": Choice(*BACKBONES),
    "hidden": Int(1),
    "layers": Int(1),
    "heads": Int(1),
    "dropout": Float(0, 1, high_open=True),
    "max_len": Int(1),
    "causal": Bool(),
    "mask_padded_keys": Bool(),
    "gru_mask_padding": Bool(),
    "causal_cross_attention": Bool(),
    "use_co_view": Bool(),
    "use_se_view": Bool(),
    "use_cross_attention": Bool(),
    "share_encoder": Bool(),
    "adapter_layers": Choice(1, 2),
    "adapter_activation": Bool(),
    "co_init": Choice("pca", "random"),
    "freeze_semantic": Bool(),
    "cross_attention_residual": Bool(),
    "alpha": Float(0),
    "sd_teachers": Int(1),
    "teacher_dropout": Bool(),
    "teacher_cache": Int(-1),
    "co_dropout": Float(0, 1, high_open=True),
    "view_aux_loss": Float(0),
    "se_pop_gate": Bool(),
    "se_sum_weight": Bool(),
    "freeze_co": Bool(),
    "item_reg": Bool(),
    "rlmrec_weight": Float(0),
    "rlmrec_tau": Float(0, low_open=True),
    "beta": Float(0),
    "cities_head_count": Int(0),
    "cities_max_shots": Int(1),
    "cities_epochs": Int(1),
    "cities_patience": Int(1),
    "cities_lr": Float(0, low_open=True),
    "cities_pe_fix": Bool(),
    "cities_restore_best": Bool(),
    "cities_match_norm": Bool(),
    "melt_epochs": Int(1),
    "melt_patience": Int(0),
    "melt_pareto": Float(0.02, 1, low_open=True),
    "melt_lambda_u": Float(0),
    "melt_lambda_i": Float(0),
    "melt_wu_residual": Bool(),
    "melt_context_self": Bool(),
    "melt_warm_update": Bool(),
    "melt_tail_update": Bool(),
    "loss": Choice(*LOSSES),
    "sampled_negatives": Int(1),
    "negative_sampler": Choice(*SAMPLERS),
    "logq_correction": Bool(),
    "gbce_t": Float(0, 1),
    "mask_prob": Float(0, 1, low_open=True),
}
TRAIN_FIELDS: dict[str, Setting] = {
    "lr": Float(0, low_open=True),
    "weight_decay": Float(0),
    "batch_size": Int(1),
    "epochs": Int(1),
    "patience": Int(1),
    "seed": Int(0, 2**32 - 1),
    "valid_protocol": Choice("full", "sampled"),
    "resample_negatives": Bool(),
    "ties": Choice("pessimistic", "optimistic"),
    "exclude_seen": Bool(auto=True),
    "eval_batch_size": Int(1),
    "device": Str(r"auto|cpu|mps|cuda(:[0-9]+)?", label="auto, cpu, cuda, cuda:N or mps"),
    "amp": Bool(),
    "test_protocols": Choices("full", "sampled"),
}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "model": {"causal": False, "mask_padded_keys": False, "gru_mask_padding": False,
                  "causal_cross_attention": False, "teacher_dropout": True,
                  # CITIES' official code: its positional-encoding bug, the last epoch's F
                  "cities_pe_fix": False, "cities_restore_best": False,
                  # MELT's official code: W_U as a direct map, contexts ending with the
                  # item itself, 180 epochs (its Beauty script), tail rows replaced from the
                  # first epoch
                  "melt_wu_residual": False, "melt_context_self": True, "melt_epochs": 180,
                  "melt_warm_update": False},
        "train": {"valid_protocol": "sampled", "resample_negatives": True,
                  "ties": "optimistic", "exclude_seen": False},
    },
    # The objective and dropout that won on validation (beauty-s3rec, plain SASRec, full
    # ranking; docs/results.md "Objectives under full ranking"): full softmax over the
    # catalogue, dropout 0.2. The paper's BCE with one negative reached half the accuracy.
    # LLM-ESR's two views as two independent towers (no cross-attention, an encoder each),
    # each half of the user state also trained on its own view's items (view_aux_loss), no
    # self-distillation: on beauty-s3rec (3 seeds, full ranking, docs/results.md "LLM-ESR
    # with independent views") it beat the paper's architecture under these objectives in
    # every group. The paper preset keeps the paper's.
    # MELT's stage 2 stops after 5 epochs without a better validation score: on SASRec its
    # best epoch was the first on every seed, and validation fell from there (docs/results.md
    # "CITIES and MELT on SASRec"), so the other 14 epochs changed nothing but the time.
    # The semantic part of the joint score has its own learnt weight (se_sum_weight): on the
    # same 3 seeds it beat w = 1 on validation on every seed (mean NDCG@10 0.0734 against
    # 0.0720) and, on test, overall and on tail users (docs/presets.md "A learnt weight").
    "default": {"model": {"loss": "ce", "dropout": 0.2, "use_cross_attention": False,
                          "share_encoder": False, "view_aux_loss": 1.0, "alpha": 0.0,
                          "se_sum_weight": True, "melt_patience": 5},
                "train": {}},
}


def build_configs(preset: str | None = "default", backbone: str | None = None,
                  model: str | None = None, overrides: dict[str, Any] | None = None,
                  config: str | Path | dict[str, Any] | None = None
                  ) -> tuple[ModelConfig, TrainConfig]:
    """The settings of a run, each layer over the one before: the preset (with the backbone's
    own defaults: one GRU layer, a bidirectional Bert4Rec), then ``config`` (a YAML/JSON file,
    a run directory or a mapping; see :func:`load_settings`), then ``overrides`` (``--set``:
    strings as on the command line, or typed values). ``model`` and ``backbone`` (else the
    file's, else llmesr and sasrec) choose the model; ``overrides`` may set them too.
    ``preset`` None takes the file's ``preset:``, else default. Every value is checked
    against MODEL_FIELDS / TRAIN_FIELDS."""
    filed = load_settings(config) if config is not None else {}
    preset = preset or filed.pop("preset", None) or "default"
    filed.pop("preset", None)
    if preset not in PRESETS:
        raise LlmesrError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    layered = {k: setting_value(k, v) for k, v in (overrides or {}).items()}
    model = layered.get("model") or model or filed.get("model") or "llmesr"
    backbone = layered.get("backbone") or backbone or filed.get("backbone") or "sasrec"
    mcfg = ModelConfig(model=model, backbone=backbone, **PRESETS[preset]["model"])
    if backbone == "gru4rec":
        mcfg.layers = 1
    if backbone == "bert4rec":
        mcfg.causal = False  # Bert4Rec is bidirectional by design
    tcfg = TrainConfig(**PRESETS[preset]["train"])
    for key, value in [*filed.items(), *layered.items()]:
        if key not in ("model", "backbone"):
            setattr(mcfg if key in MODEL_FIELDS else tcfg, key, value)
    mcfg.model, mcfg.backbone = model, backbone
    return mcfg.validate(), tcfg.validate()


def setting_value(key: str, value: Any, where: str = "") -> Any:
    """One setting's value, checked: a string is parsed as on the command line."""
    rule = MODEL_FIELDS.get(key) or TRAIN_FIELDS.get(key)
    if rule is None:
        raise unknown_setting(key, [*MODEL_FIELDS, *TRAIN_FIELDS], where)
    try:
        return rule.parse(key, value) if isinstance(value, str) else rule.check(key, value)
    except LlmesrError as e:
        raise LlmesrError(f"{where}{e}") from None


def load_settings(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The settings in a config file as one checked ``{field: value}`` mapping.

    ``config`` is a YAML or JSON file, a run directory (its config.yaml, else config.json) or
    an already-read mapping. The content is either flat (``lr: 0.001``, ``model: id``, ...) or
    in two sections, ``model:`` (ModelConfig fields) and ``train:`` (TrainConfig fields),
    with an optional top-level ``preset:`` (kept under that key); a run's config.json
    (``{"kind": "llmesr-run", "configs": {...}}``) and the ``best.yaml`` of ``llmesr tune``
    are valid too. An unknown key is an error naming it.
    """
    where = ""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_dir():
            found = [path / n for n in ("config.yaml", "config.json") if (path / n).is_file()]
            if not found:
                raise LlmesrError(f"{path} is a folder without config.yaml or config.json")
            path = found[0]
        where = f"{path}: "
        data = read_settings_file(path)
    else:
        data = config
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LlmesrError(f"{where}expected a mapping of settings (key: value), got "
                          f"{type(data).__name__}")
    if data.get("kind") == "llmesr-run" and isinstance(data.get("configs"), dict):
        data = data["configs"]        # a run's config.json
    out: dict[str, Any] = {}
    sections = {"model": MODEL_FIELDS, "train": TRAIN_FIELDS}
    for key, value in data.items():
        key = str(key)
        if key in sections and (isinstance(value, dict) or value is None):
            for k, v in (value or {}).items():
                k = str(k)
                if k not in sections[key]:
                    other = "train" if key == "model" else "model"
                    if k in sections[other]:
                        raise LlmesrError(f"{where}'{k}' is a {other} setting: put it under "
                                          f"'{other}:', not '{key}:'")
                    raise unknown_setting(k, sections[key], f"{where}section '{key}': ")
                out[k] = setting_value(k, v, where)
        elif key == "preset":
            if value not in PRESETS:
                raise LlmesrError(f"{where}preset must be one of {', '.join(PRESETS)}, got "
                                  f"{value!r}")
            out["preset"] = value
        else:
            out[key] = setting_value(key, value, where)
    return out


def configs_to_yaml(mcfg: ModelConfig, tcfg: TrainConfig, header: str = "") -> str:
    """The settings as YAML in two sections (``model:``, ``train:``), valid for ``--config``;
    ``header`` becomes comment lines at the top."""
    import yaml

    body = yaml.safe_dump(json.loads(json.dumps(configs_to_dict(mcfg, tcfg))), sort_keys=False)
    return "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + body


def write_config_yaml(path: str | Path, mcfg: ModelConfig, tcfg: TrainConfig,
                      header: str = "") -> None:
    write_text_atomic(path, configs_to_yaml(mcfg, tcfg, header))


def configs_to_dict(mcfg: ModelConfig, tcfg: TrainConfig) -> dict[str, Any]:
    return {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg)}


def configs_from_dict(d: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    train = dict(d["train"])
    train["test_protocols"] = tuple(train.get("test_protocols", ()))
    return ModelConfig(**d["model"]).validate(), TrainConfig(**train).validate()


__all__ = ["ModelConfig", "TrainConfig", "PRESETS", "MODEL_FIELDS", "TRAIN_FIELDS",
           "build_configs", "load_settings", "setting_value", "configs_to_dict",
           "configs_from_dict", "configs_to_yaml", "write_config_yaml"]
