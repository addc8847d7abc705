"""Model and training settings, and the two presets.

``paper`` reproduces the original code's behaviour, result-changing quirks included (SPEC §5,
§9.1). ``default`` fixes the bugs (causal attention, padded keys masked, GRU padding masked,
causal cross-attention) and keeps every hyper-parameter of the paper. Every difference is a
named field below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmesr.config import coerce
from llmesr.errors import LlmesrError

MODELS = ("id", "llminit", "llmesr")
BACKBONES = ("sasrec", "bert4rec", "gru4rec")
LOSSES = ("bce", "ce", "sampled_ce")


@dataclass
class ModelConfig:
    #: id (plain backbone) | llminit (ID table from PCA of LLM embeddings) | llmesr
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
    #: simulated cold start (not in the paper): in training, each lookup of an item's
    #: collaborative row is replaced by its PCA initialisation with this probability, so the
    #: model learns to score items whose row never trained (items added later by text).
    #: 0 = off. Needs co_init = pca.
    co_dropout: float = 0.0
    #: item regularisation (SPEC §4.8; off in the paper's scripts)
    item_reg: bool = False
    beta: float = 0.1
    # ---- loss ------------------------------------------------------------------------------
    #: bce (the paper: one negative per target) | ce (full softmax) | sampled_ce
    loss: str = "bce"
    sampled_negatives: int = 256
    #: Bert4Rec masking probability (the paper's scripts: 0.6)
    mask_prob: float = 0.6

    def validate(self) -> "ModelConfig":
        for name, allowed in (("model", MODELS), ("backbone", BACKBONES), ("loss", LOSSES),
                              ("co_init", ("pca", "random"))):
            if getattr(self, name) not in allowed:
                raise LlmesrError(f"{name} must be one of {', '.join(allowed)}, not "
                                  f"{getattr(self, name)!r}")
        if self.model == "llmesr" and not (self.use_co_view or self.use_se_view):
            raise LlmesrError("LLM-ESR needs at least one of use_co_view / use_se_view")
        if self.adapter_layers not in (1, 2):
            raise LlmesrError("adapter_layers must be 1 or 2")
        if not 0.0 <= self.co_dropout < 1.0:
            raise LlmesrError("co_dropout must be in [0, 1)")
        if self.co_dropout and (self.model == "id" or self.co_init != "pca"):
            raise LlmesrError("co_dropout replaces collaborative rows by their PCA "
                              "initialisation: it needs model llminit or llmesr with co_init=pca")
        if self.hidden % self.heads:
            raise LlmesrError("hidden must be divisible by heads")
        return self

    @property
    def dual(self) -> bool:
        return self.model == "llmesr" and self.use_co_view and self.use_se_view


@dataclass
class TrainConfig:
    lr: float = 1e-3
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
    #: candidate even when it was seen before). Off by default and in the paper: a repeat
    #: purchase is a legitimate recommendation.
    exclude_seen: bool = False
    eval_batch_size: int = 1024
    #: auto | cpu | cuda
    device: str = "auto"
    #: bf16 autocast on CUDA
    amp: bool = True
    #: evaluate on the test split after training with these protocols
    test_protocols: tuple[str, ...] = ("full", "sampled")

    def validate(self) -> "TrainConfig":
        if self.valid_protocol not in ("full", "sampled"):
            raise LlmesrError("valid_protocol must be full or sampled")
        if self.ties not in ("pessimistic", "optimistic"):
            raise LlmesrError("ties must be pessimistic or optimistic")
        return self


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "model": {"causal": False, "mask_padded_keys": False, "gru_mask_padding": False,
                  "causal_cross_attention": False, "teacher_dropout": True},
        "train": {"valid_protocol": "sampled", "resample_negatives": True,
                  "ties": "optimistic"},
    },
    "default": {"model": {}, "train": {}},
}


def build_configs(preset: str, backbone: str, model: str,
                  overrides: dict[str, str] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The preset's settings for a model and backbone, then ``key=value`` overrides."""
    if preset not in PRESETS:
        raise LlmesrError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    mcfg = ModelConfig(model=model, backbone=backbone,
                       **PRESETS[preset]["model"])
    if backbone == "gru4rec":
        mcfg.layers = 1
    if backbone == "bert4rec":
        mcfg.causal = False  # Bert4Rec is bidirectional by design
    tcfg = TrainConfig(**PRESETS[preset]["train"])
    for key, value in (overrides or {}).items():
        if key in {f.name for f in dataclasses.fields(ModelConfig)}:
            setattr(mcfg, key, _parse(ModelConfig, key, value))
        elif key in {f.name for f in dataclasses.fields(TrainConfig)}:
            setattr(tcfg, key, _parse(TrainConfig, key, value))
        else:
            raise LlmesrError(f"unknown setting '{key}'; see 'llmesr train --help' for the "
                              "model and training settings")
    return mcfg.validate(), tcfg.validate()


def _parse(cls: type, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    current = {f.name: f for f in dataclasses.fields(cls)}[key]
    if current.type in ("bool", bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise LlmesrError(f"setting '{key}' needs true or false, got {value!r}")
    if "tuple" in str(current.type):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return coerce(cls, key, value)


def configs_to_dict(mcfg: ModelConfig, tcfg: TrainConfig) -> dict[str, Any]:
    return {"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg)}


def configs_from_dict(d: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    train = dict(d["train"])
    train["test_protocols"] = tuple(train.get("test_protocols", ()))
    return ModelConfig(**d["model"]).validate(), TrainConfig(**train).validate()


__all__ = ["ModelConfig", "TrainConfig", "PRESETS", "build_configs", "configs_to_dict",
           "configs_from_dict"]
