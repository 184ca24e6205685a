"""Model configs: the four released Molmo models, tiny variants for tests, validation, conversion.

A model config is one `ml_collections.ConfigDict` with five sections:

  vit          the image encoder (CLIP / SigLIP / DINOv2 ViT)
  connector    padding embedding, 2D pooling, projector into the LLM width
  llm          the decoder (OLMo, Qwen2, OLMoE families)
  preprocess   image cropping / tokenisation settings the preprocessor needs
  formatting   prompt formatting of the official `DataFormatter`

plus `dtype` (compute dtype) and `param_dtype`. Numbers come from allenai/molmo `launch_scripts/utils.py`
(`DEFAULT_VISION_BACKBONE`, `OLMOE`, `OLMO_1024_PREVIEW`, `QWEN2_7B`, `QWEN2_72B`) and the config.json of
each released HF repo.
`from_official(d)` turns an official `olmo.config.ModelConfig` dict (config.json of the native format)
into this layout; `validate(cfg)` raises a `ConfigError` naming the field and the allowed values.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

VIT_TYPES = ("openai", "siglip", "dino")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh", "relu", "silu")
PROJECTOR_TYPES = ("mlp", "2mlp", "linear")
PADDING_EMBED_TYPES = (None, "pad_and_partial_pad", "pad_embed", "regress")
BLOCK_TYPES = ("sequential", "moe")
NORM_TYPES = ("rms", "default")
CROP_MODES = ("resize", "overlap-and-resize-c2")
RESIZE_MODES = ("default", "metaclip", "siglip", "dino")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "fused")  # see models/layers.py `attention_kernel`
MOE_IMPLS = ("auto", "ragged", "blocked", "dense")  # see models/moe.py `moe_kernel`
DTYPES = ("float32", "bfloat16", "float16")
INIT_SCHEMES = ("normal", "fan_in")  # random init of Dense kernels, see `layers.kernel_init`
COMPONENTS = ("connector", "vit", "llm")  # trained parts: optimizer groups (`train.optim`), what can be frozen

# The remote/HF code spells some enum values with dashes.
_LEGACY_NAMES = {"attention-meanq": "attention_meanq", "attention-2wide": "attention_2wide"}


class ConfigError(ValueError):
    """A config field holds a value the model cannot use."""


def vit_config(kind: str = "openai") -> ml_collections.ConfigDict:
    """CLIP ViT-L/14-336 as used by every released Molmo (23 of its 24 layers kept)."""
    c = ml_collections.ConfigDict()
    c.kind = kind  # openai (CLIP / MetaCLIP) | siglip | dino
    c.image_size = (336, 336)
    c.patch_size = 14
    c.d_model = 1024
    c.n_heads = 16
    c.n_kv_heads = 16
    c.head_dim = 64
    c.mlp_hidden = 4096
    c.n_layers = 23
    c.activation = "quick_gelu"
    c.norm_eps = 1e-5
    c.num_pos = 577  # positional-embedding rows (incl. the class position when there is one)
    c.dropout = 0.0  # training: attention outputs of the ViT and of an attention pooling (official residual_dropout)
    c.init = "normal"  # random init of its Dense kernels (INIT_SCHEMES); released weights replace it
    c.pos_init_scale = 1.0  # std of the positional embedding's random init, times the init scheme's
    c.remat_policy = "full"
    c.scan_unroll = 1  # layers unrolled per scan iteration
    # Crops the ViT encodes per (micro-)batch: only the real crops, gathered into this many static slots
    # (0: every crop slot, padding crops included). A batch with more real crops encodes every slot.
    c.crop_budget = 0
    return c


def _base(llm: Mapping[str, Any], connector_hidden: int) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.name = llm["name"]
    cfg.vit = vit_config()
    cfg.vit_layers = (-2, -9)

    cfg.connector = ml_collections.ConfigDict()
    cfg.connector.padding_embed = "pad_and_partial_pad"
    cfg.connector.pooling = "attention_meanq"
    cfg.connector.pooling_h = 2
    cfg.connector.pooling_w = 2
    cfg.connector.projector = "mlp"
    cfg.connector.projector_hidden = connector_hidden  # = LLM mlp hidden (half the fused ff_proj width)
    cfg.connector.feature_dropout = 0.0
    cfg.connector.init = "normal"  # random init of its Dense kernels (INIT_SCHEMES)

    c = ml_collections.ConfigDict()
    c.block_type = "sequential"
    c.d_model = 0
    c.n_layers = 0
    c.n_heads = 0
    c.n_kv_heads = 0
    c.head_dim = 0
    c.mlp_hidden = 0  # SwiGLU hidden width (per expert for MoE)
    c.norm_type = "rms"
    c.norm_eps = 1e-6
    c.norm_after = False  # OLMo-2 style post-norm on the branch outputs
    c.qk_norm = False  # RMSNorm over the full q / k projections
    c.qkv_bias = False
    c.rope_theta = 10_000.0
    c.vocab_size = 0  # tokenizer size; image special tokens are vocab_size .. vocab_size+4
    c.embedding_size = 0  # rows of the base embedding and of the output head
    c.additional_vocab_size = 128
    c.max_sequence_length = 4096
    c.moe_num_experts = 0
    c.moe_top_k = 0
    c.moe_loss_weight = 0.0  # load-balancing loss (0 in the released MolmoE recipe)
    c.moe_zloss_weight = 0.0  # router z-loss (0 in the released MolmoE recipe)
    c.moe_impl = "auto"  # "ragged" (grouped matmul), "blocked" or "dense" (every expert on every token); models/moe.py
    c.residual_dropout = 0.0
    c.response_residual_dropout = 0.0
    c.attention_dropout = 0.0
    c.embedding_dropout = 0.0
    c.remat_policy = "full"
    c.scan_unroll = 1  # layers unrolled per scan iteration (n_layers: fully unrolled, params stay stacked)
    c.attention_impl = "auto"  # every attention (ViT, pooling, LLM): "xla" ours, "fused" jax.nn / cuDNN
    for k, v in llm.items():
        if k != "name":
            c[k] = v
    cfg.llm = c

    p = ml_collections.ConfigDict()
    p.crop_mode = "overlap-and-resize-c2"
    p.max_crops = 12
    p.overlap_margins = (4, 4)
    p.use_col_tokens = True
    p.resize_mode = "default"
    p.pad_value = 0.0
    cfg.preprocess = p

    f = ml_collections.ConfigDict()
    f.prompt_type = "uber_model"
    f.message_formatting = "role"
    f.system_prompt_kind = "demo_or_style"
    f.always_start_with_space = True
    f.default_inference_len = 65
    f.multi_annotation_weighting = "root_subsegments"
    cfg.formatting = f

    cfg.dtype = "float32"
    cfg.param_dtype = "float32"
    return cfg


def molmoe_1b() -> ml_collections.ConfigDict:
    """MolmoE-1B-0924: OLMoE-1B-7B (64 experts, top-8) + CLIP ViT-L/14-336."""
    return _base(dict(name="MolmoE-1B-0924", block_type="moe", d_model=2048, n_layers=16, n_heads=16,
                      n_kv_heads=16, head_dim=128, mlp_hidden=1024, norm_eps=1e-5, qk_norm=True,
                      rope_theta=10_000.0, vocab_size=50280, embedding_size=50304,
                      moe_num_experts=64, moe_top_k=8, attention_dropout=0.1), connector_hidden=1024)


def molmo_7b_o() -> ml_collections.ConfigDict:
    """Molmo-7B-O-0924: OLMo-7B-1024-preview (post-norm, QK-norm) + CLIP ViT-L/14-336."""
    return _base(dict(name="Molmo-7B-O-0924", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                      head_dim=128, mlp_hidden=11008, norm_eps=1e-6, norm_after=True, qk_norm=True,
                      rope_theta=500_000.0, vocab_size=100278, embedding_size=100352),
                 connector_hidden=11008)


def molmo_7b_d() -> ml_collections.ConfigDict:
    """Molmo-7B-D-0924: Qwen2-7B + CLIP ViT-L/14-336."""
    return _base(dict(name="Molmo-7B-D-0924", d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                      head_dim=128, mlp_hidden=18944, norm_eps=1e-6, qkv_bias=True,
                      rope_theta=1_000_000.0, vocab_size=152064, embedding_size=152064),
                 connector_hidden=18944)


def molmo_72b() -> ml_collections.ConfigDict:
    """Molmo-72B-0924: Qwen2-72B + CLIP ViT-L/14-336."""
    return _base(dict(name="Molmo-72B-0924", d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                      head_dim=128, mlp_hidden=29568, norm_eps=1e-5, qkv_bias=True,
                      rope_theta=1_000_000.0, vocab_size=152064, embedding_size=152064),
                 connector_hidden=29568)


def tiny(family: str = "qwen2") -> ml_collections.ConfigDict:
    """A few-hundred-kilobyte model of the given family ("qwen2", "olmo", "olmoe") for tests.

    Same shapes as the official fixtures: ViT width 64 x 9 layers, LLM width 64 x 2 layers, 4 crops.
    """
    base = {"qwen2": molmo_7b_d, "olmo": molmo_7b_o, "olmoe": molmoe_1b}
    if family not in base:
        raise ConfigError(f"tiny(family={family!r}): family must be one of {sorted(base)}")
    cfg = base[family]()
    cfg.name = f"tiny-{family}"
    cfg.vit.update(d_model=64, n_heads=4, n_kv_heads=4, head_dim=16, mlp_hidden=128, n_layers=9)
    hidden = {"qwen2": 128, "olmo": 172, "olmoe": 32}[family]
    cfg.llm.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2 if family == "qwen2" else 4,
                   head_dim=16, mlp_hidden=hidden, vocab_size=512, embedding_size=512)
    if family == "olmoe":
        cfg.llm.update(moe_num_experts=4, moe_top_k=2)
    cfg.connector.projector_hidden = hidden
    cfg.preprocess.max_crops = 4
    return cfg


RELEASED = {
    "MolmoE-1B-0924": molmoe_1b,
    "Molmo-7B-O-0924": molmo_7b_o,
    "Molmo-7B-D-0924": molmo_7b_d,
    "Molmo-72B-0924": molmo_72b,
}


def get_config(name: str) -> ml_collections.ConfigDict:
    """A released model config by name (e.g. "Molmo-7B-D-0924") or "tiny-<family>"."""
    if name.startswith("tiny-"):
        return tiny(name[len("tiny-"):])
    if name not in RELEASED:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(RELEASED)} or tiny-qwen2/olmo/olmoe")
    return validate(RELEASED[name]())


# ------------------------------------------------------------------------------------------------
# Derived quantities


def patch_grid(cfg) -> tuple[int, int]:
    """(rows, cols) of ViT patches per crop, e.g. (24, 24)."""
    return cfg.vit.image_size[0] // cfg.vit.patch_size, cfg.vit.image_size[1] // cfg.vit.patch_size


def pooled_grid(cfg) -> tuple[int, int]:
    """(rows, cols) of LLM tokens per crop after 2D pooling, e.g. (12, 12)."""
    h, w = patch_grid(cfg)
    return math.ceil(h / cfg.connector.pooling_h), math.ceil(w / cfg.connector.pooling_w)


def num_prefix_tokens(cfg) -> int:
    """Class tokens the ViT prepends (CLIP and DINO: 1, SigLIP: 0)."""
    return 0 if cfg.vit.kind == "siglip" else 1


def poolings() -> Mapping[str, Any]:
    """The pooling registry `connector.POOLINGS` (name -> `PoolingSpec`)."""
    from molmo_jax.models import connector  # the registry lives with the modules it builds
    return connector.POOLINGS


def pooled_dim(cfg) -> int:
    """Width of one pooled image token (the projector's input), as the config's pooling declares it."""
    return poolings()[cfg.connector.pooling].width(cfg)


def max_total_crops(cfg) -> int:
    """Crops per image including the global view (`get_max_crops` of the official config)."""
    return 1 if cfg.preprocess.crop_mode == "resize" else 1 + cfg.preprocess.max_crops


# ------------------------------------------------------------------------------------------------
# Validation


def _require(cond: bool, field: str, value: Any, allowed: str):
    if not cond:
        raise ConfigError(f"config field {field}={value!r} is invalid: {allowed}")


def _positive(cfg, field: str):
    section, _, name = field.rpartition(".")
    value = cfg[section][name] if section else cfg[name]
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field, value,
             "must be a positive integer")


def _check_heads(section: str, names: tuple[str, str, str, str], c):
    """kv heads divide heads, and heads * head_dim equals the width (names: heads, kv, head_dim, width)."""
    heads, kv, head_dim, width = names
    _require(c[heads] % c[kv] == 0, f"{section}.{kv}", c[kv], f"must divide {section}.{heads}={c[heads]}")
    _require(c[heads] * c[head_dim] == c[width], f"{section}.{head_dim}", c[head_dim],
             f"{section}.{heads} * {section}.{head_dim} must equal {section}.{width}={c[width]}")


def validate(cfg) -> ml_collections.ConfigDict:
    """Checks every field the model reads; returns cfg. Raises ConfigError naming the field."""
    for field in ("vit.patch_size", "vit.d_model", "vit.n_heads", "vit.n_kv_heads", "vit.head_dim",
                  "vit.mlp_hidden", "vit.n_layers", "vit.num_pos",
                  "llm.d_model", "llm.n_layers", "llm.n_heads", "llm.n_kv_heads", "llm.head_dim",
                  "llm.mlp_hidden", "llm.vocab_size", "llm.embedding_size", "llm.max_sequence_length",
                  "connector.pooling_h", "connector.pooling_w", "connector.projector_hidden",
                  "preprocess.max_crops"):
        _positive(cfg, field)
    v, llm, con = cfg.vit, cfg.llm, cfg.connector
    _require(v.kind in VIT_TYPES, "vit.kind", v.kind, f"allowed: {VIT_TYPES}")
    _require(v.crop_budget >= 0, "vit.crop_budget", v.crop_budget, "must be >= 0 (0: every crop slot)")
    _require(v.activation in ACTIVATIONS, "vit.activation", v.activation, f"allowed: {ACTIVATIONS}")
    _require(v.pos_init_scale > 0, "vit.pos_init_scale", v.pos_init_scale, "must be > 0")
    for field, scheme in (("vit.init", v.init), ("connector.init", cfg.connector.init)):
        _require(scheme in INIT_SCHEMES, field, scheme, f"allowed: {INIT_SCHEMES}")
    _check_heads("vit", ("n_heads", "n_kv_heads", "head_dim", "d_model"), v)
    _require(all(s % v.patch_size == 0 for s in v.image_size), "vit.image_size", v.image_size,
             f"both sides must be multiples of vit.patch_size={v.patch_size}")
    gh, gw = patch_grid(cfg)
    n_pos = gh * gw + num_prefix_tokens(cfg)
    _require(math.isqrt(v.num_pos - num_prefix_tokens(cfg)) ** 2 == v.num_pos - num_prefix_tokens(cfg),
             "vit.num_pos", v.num_pos, f"minus the prefix tokens must be a square grid (e.g. {n_pos})")
    _require(len(cfg.vit_layers) >= 1 and all(isinstance(i, int) and -v.n_layers <= i < v.n_layers
                                              for i in cfg.vit_layers),
             "vit_layers", tuple(cfg.vit_layers), f"indices into the {v.n_layers} ViT layers")

    _require(con.padding_embed in PADDING_EMBED_TYPES, "connector.padding_embed", con.padding_embed,
             f"allowed: {PADDING_EMBED_TYPES}")
    registry = poolings()
    _require(con.pooling in registry, "connector.pooling", con.pooling,
             f"allowed: {tuple(registry)} (add one with connector.register_pooling in a module given to --import)")
    _require(con.projector in PROJECTOR_TYPES, "connector.projector", con.projector,
             f"allowed: {PROJECTOR_TYPES}")
    window = registry[con.pooling].window
    if window:
        _require((con.pooling_h, con.pooling_w) == window, "connector.pooling", con.pooling,
                 f"{con.pooling!r} needs connector.pooling_h == {window[0]} and connector.pooling_w == {window[1]}")
    if con.projector == "2mlp":
        _require(pooled_dim(cfg) == llm.d_model, "connector.projector", con.projector,
                 f"'2mlp' adds a residual MLP, so the pooled width {pooled_dim(cfg)} must equal "
                 f"llm.d_model={llm.d_model}")

    _require(llm.block_type in BLOCK_TYPES, "llm.block_type", llm.block_type, f"allowed: {BLOCK_TYPES}")
    _require(llm.norm_type in NORM_TYPES, "llm.norm_type", llm.norm_type, f"allowed: {NORM_TYPES}")
    _check_heads("llm", ("n_heads", "n_kv_heads", "head_dim", "d_model"), llm)
    _require(llm.head_dim % 2 == 0, "llm.head_dim", llm.head_dim, "must be even (rotary embedding)")
    _require(llm.embedding_size >= llm.vocab_size, "llm.embedding_size", llm.embedding_size,
             f"must be >= llm.vocab_size={llm.vocab_size}")
    _require(llm.embedding_size + llm.additional_vocab_size >= llm.vocab_size + 5,
             "llm.additional_vocab_size", llm.additional_vocab_size,
             "the 5 image special tokens (ids vocab_size..vocab_size+4) need embedding rows")
    _require(llm.rope_theta > 0, "llm.rope_theta", llm.rope_theta, "must be > 0")
    _require(llm.norm_eps > 0, "llm.norm_eps", llm.norm_eps, "must be > 0")
    if llm.block_type == "moe":
        _positive(cfg, "llm.moe_num_experts")
        _require(0 < llm.moe_top_k <= llm.moe_num_experts, "llm.moe_top_k", llm.moe_top_k,
                 f"must be in [1, llm.moe_num_experts={llm.moe_num_experts}]")
    for field in ("moe_loss_weight", "moe_zloss_weight"):
        _require(llm[field] >= 0, f"llm.{field}", llm[field], "must be >= 0")
    for field in ("residual_dropout", "response_residual_dropout", "attention_dropout",
                  "embedding_dropout"):
        _require(0.0 <= llm[field] < 1.0, f"llm.{field}", llm[field], "must be in [0, 1)")
    for tower in ("vit", "llm"):
        _require(cfg[tower].remat_policy in REMAT_POLICIES, f"{tower}.remat_policy", cfg[tower].remat_policy,
                 f"allowed: {REMAT_POLICIES}")
        _positive(cfg, f"{tower}.scan_unroll")
    _require(llm.moe_impl in MOE_IMPLS, "llm.moe_impl", llm.moe_impl, f"allowed: {MOE_IMPLS}")
    _require(llm.attention_impl in ATTENTION_IMPLS, "llm.attention_impl", llm.attention_impl,
             f"allowed: {ATTENTION_IMPLS}")

    p = cfg.preprocess
    _require(p.crop_mode in CROP_MODES, "preprocess.crop_mode", p.crop_mode, f"allowed: {CROP_MODES}")
    _require(p.resize_mode in RESIZE_MODES, "preprocess.resize_mode", p.resize_mode,
             f"allowed: {RESIZE_MODES}")
    _require(len(p.overlap_margins) == 2 and all(m >= 0 for m in p.overlap_margins),
             "preprocess.overlap_margins", tuple(p.overlap_margins), "two non-negative patch counts")
    _require(cfg.dtype in DTYPES, "dtype", cfg.dtype, f"allowed: {DTYPES}")
    _require(cfg.param_dtype in DTYPES, "param_dtype", cfg.param_dtype, f"allowed: {DTYPES}")
    return cfg


# ------------------------------------------------------------------------------------------------
# Conversion from the official formats


_VIT_FIELDS = {  # official VisionBackboneConfig field -> ours
    "image_model_type": "kind", "image_default_input_size": "image_size", "image_patch_size": "patch_size",
    "image_emb_dim": "d_model", "image_num_heads": "n_heads", "image_num_key_value_heads": "n_kv_heads",
    "image_head_dim": "head_dim", "image_mlp_dim": "mlp_hidden", "image_num_layers": "n_layers",
    "image_mlp_activations": "activation", "image_norm_eps": "norm_eps", "image_num_pos": "num_pos",
    "residual_dropout": "dropout",
}


def vit_fields_from_official(vb: Mapping[str, Any]) -> dict[str, Any]:
    """Our `vit` fields from (a subset of) an official `VisionBackboneConfig` dict."""
    out = {_VIT_FIELDS[k]: v for k, v in vb.items() if k in _VIT_FIELDS}
    if "image_size" in out:
        out["image_size"] = tuple(out["image_size"])
    return out


def from_official(d: Mapping[str, Any], name: str = "official") -> ml_collections.ConfigDict:
    """Builds a config from an official `olmo.config.ModelConfig` dict (native config.json).

    Every field that changes the computation is read; a value the code cannot run raises ConfigError.
    """
    unsupported = {
        "clip_qkv": (None,), "include_bias": (False,), "weight_tying": (False,), "rope": (True,),
        "scale_logits": (False,), "normalize_input_embeds": (False,), "activation_type": ("swiglu",),
        "use_position_ids": (True,), "layer_norm_with_affine": (True,), "block_group_size": (1,),
        "moe_shared_expert": (False, None), "head_dim": (None,), "rope_impl": ("llama",),
    }
    for k, allowed in unsupported.items():
        if k in d and d[k] not in allowed:
            raise ConfigError(f"official config field {k}={d[k]!r} is not supported; supported: {allowed}")
    vb = d["vision_backbone"]
    if vb.get("attention_dropout", 0.0):
        raise ConfigError(f"official config field vision_backbone.attention_dropout={vb['attention_dropout']!r} "
                          "is not supported; supported: 0.0")
    block_type = d.get("block_type", "sequential")
    d_model, n_heads = d["d_model"], d["n_heads"]
    mlp_hidden = (d.get("mlp_hidden_size") or d["mlp_ratio"] * d_model) // 2
    pooling = _LEGACY_NAMES.get(d["image_pooling_2d"], d["image_pooling_2d"])

    cfg = _base(dict(name=name), connector_hidden=mlp_hidden)
    cfg.vit.update(vit_fields_from_official(vb))
    cfg.vit_layers = tuple(d["vit_layers"]) if d.get("vit_layers") is not None else (-1,)
    cfg.connector.update(
        padding_embed=d.get("image_padding_embed"), pooling=pooling,
        pooling_h=d["image_pooling_h"], pooling_w=d["image_pooling_w"],
        projector=d["image_projector"], feature_dropout=d.get("image_feature_dropout", 0.0))
    cfg.llm.update(
        block_type=block_type, d_model=d_model, n_layers=d["n_layers"], n_heads=n_heads,
        n_kv_heads=d.get("n_kv_heads") or n_heads, head_dim=d_model // n_heads,
        mlp_hidden=(d["mlp_ratio"] * d_model // 2) if block_type == "moe" else mlp_hidden,
        norm_type=d.get("layer_norm_type", "rms"), norm_eps=d["layer_norm_eps"],
        norm_after=bool(d.get("norm_after", False)), qk_norm=bool(d.get("attention_layer_norm", False)),
        qkv_bias=bool(d.get("qkv_bias", False)) and block_type != "moe", rope_theta=float(d["rope_theta"]),
        vocab_size=d["vocab_size"], embedding_size=d.get("embedding_size") or d["vocab_size"],
        additional_vocab_size=d.get("additional_vocab_size") or 0,
        max_sequence_length=d.get("max_sequence_length", 4096),
        moe_num_experts=d.get("moe_num_experts", 0) if block_type == "moe" else 0,
        moe_top_k=d.get("moe_top_k", 0) if block_type == "moe" else 0,
        moe_loss_weight=(d.get("moe_loss_weight") or 0.0) if block_type == "moe" else 0.0,
        moe_zloss_weight=(d.get("moe_zloss_weight") or 0.0) if block_type == "moe" else 0.0,
        residual_dropout=d.get("residual_dropout", 0.0),
        response_residual_dropout=d.get("response_residual_dropout", 0.0),
        attention_dropout=d.get("attention_dropout", 0.0),
        embedding_dropout=d.get("embedding_dropout", 0.0))
    if block_type == "moe":
        cfg.connector.projector_hidden = cfg.llm.mlp_hidden
    cfg.preprocess.update(
        crop_mode=d["crop_mode"], max_crops=d["max_crops"], overlap_margins=tuple(d["overlap_margins"]),
        use_col_tokens=d["use_col_tokens"], resize_mode=vb.get("resize_mode", "default"),
        pad_value=float(d.get("pad_value", 0.0)))
    cfg.formatting.update(
        prompt_type=d.get("prompt_type", "uber_model"), message_formatting=d.get("message_formatting", "role"),
        system_prompt_kind=d.get("system_prompt_kind", "demo_or_style"),
        always_start_with_space=d.get("always_start_with_space", True),
        default_inference_len=d.get("default_inference_len", 65),
        multi_annotation_weighting=d.get("multi_annotation_weighting", "root_subsegments"))
    return validate(cfg)


def from_hf_release(d: Mapping[str, Any], vision: Mapping[str, Any] | None = None, name: str = "hf-release",
                    preprocessor: Mapping[str, Any] | None = None,
                    full: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Builds a config from the files of a Hugging Face release (allenai/Molmo-*-0924).

    d: its config.json. The dense release (model_type "molmo") describes only the LLM there; its remote
    code hard-codes the vision tower, connector and formatting to the released values, which this uses
    unless `full` (the official config our exports add) gives them. MolmoE's config.json is a full
    official dict. preprocessor: its preprocessor_config.json (crops, margins, input size), which wins
    for those fields. vision: official `VisionBackboneConfig` fields (e.g. {"image_emb_dim": 64}) that
    override the ViT last.
    """
    if "d_model" in d:  # MolmoE: OLMo-style dump of the native ModelConfig
        cfg = from_official(d, name=name)
    else:
        cfg = from_official(full, name=name) if full else molmo_7b_d()
        cfg.name = name
        if d.get("clip_qkv") is not None:
            raise ConfigError(f"release config field clip_qkv={d['clip_qkv']!r} is not supported; supported: None")
        hidden = d["intermediate_size"] // 2
        n_heads = d["num_attention_heads"]
        cfg.llm.update(
            d_model=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=d.get("num_key_value_heads") or n_heads, head_dim=d["hidden_size"] // n_heads,
            mlp_hidden=hidden, norm_type=d.get("layer_norm_type", "rms"), norm_eps=d["layer_norm_eps"],
            norm_after=bool(d.get("norm_after", False)), qk_norm=bool(d.get("attention_layer_norm", False)),
            qkv_bias=bool(d.get("qkv_bias", False)), rope_theta=float(d["rope_theta"]),
            vocab_size=d["vocab_size"], embedding_size=d.get("embedding_size") or d["vocab_size"],
            max_sequence_length=d.get("max_position_embeddings", 4096))
        if not full:
            cfg.connector.projector_hidden = hidden
    if preprocessor:
        p = preprocessor
        cfg.preprocess.update(max_crops=p.get("max_crops", cfg.preprocess.max_crops),
                              overlap_margins=tuple(p.get("overlap_margins", cfg.preprocess.overlap_margins)))
        cfg.vit.update(image_size=tuple(p.get("base_image_input_size", cfg.vit.image_size)),
                       patch_size=p.get("image_patch_size", cfg.vit.patch_size))
    if vision:
        cfg.vit.update(vit_fields_from_official(vision))
    return validate(cfg)


def to_official(cfg) -> dict[str, Any]:
    """An official `ModelConfig` dict (native config.json) for cfg; `from_official` inverts it."""
    v, llm, con, p, f = cfg.vit, cfg.llm, cfg.connector, cfg.preprocess, cfg.formatting
    vision = {ours: v[ours] for ours in _VIT_FIELDS.values()}
    vision = {k: vision[o] for k, o in _VIT_FIELDS.items()}
    vision.update(image_default_input_size=list(v.image_size), resize_mode=p.resize_mode)
    moe = llm.block_type == "moe"
    return {
        "d_model": llm.d_model, "n_heads": llm.n_heads, "n_kv_heads": llm.n_kv_heads, "n_layers": llm.n_layers,
        "qkv_bias": llm.qkv_bias, "clip_qkv": None, "include_bias": False, "activation_type": "swiglu",
        "block_type": llm.block_type, "block_group_size": 1, "rope": True, "rope_theta": llm.rope_theta,
        "mlp_ratio": 2 * llm.mlp_hidden // llm.d_model if moe else 4,
        "mlp_hidden_size": None if moe else 2 * llm.mlp_hidden,
        "layer_norm_type": llm.norm_type, "layer_norm_eps": llm.norm_eps, "norm_after": llm.norm_after,
        "attention_layer_norm": llm.qk_norm, "vocab_size": llm.vocab_size, "embedding_size": llm.embedding_size,
        "additional_vocab_size": llm.additional_vocab_size, "max_sequence_length": llm.max_sequence_length,
        "moe_num_experts": llm.moe_num_experts, "moe_top_k": llm.moe_top_k,
        "moe_loss_weight": llm.moe_loss_weight, "moe_zloss_weight": llm.moe_zloss_weight,
        "residual_dropout": llm.residual_dropout, "response_residual_dropout": llm.response_residual_dropout,
        "attention_dropout": llm.attention_dropout, "embedding_dropout": llm.embedding_dropout,
        "weight_tying": False, "scale_logits": False, "normalize_input_embeds": False, "use_position_ids": True,
        "vision_backbone": vision, "vit_layers": list(cfg.vit_layers),
        "image_padding_embed": con.padding_embed, "image_pooling_2d": con.pooling,
        "image_pooling_h": con.pooling_h, "image_pooling_w": con.pooling_w, "image_projector": con.projector,
        "image_feature_dropout": con.feature_dropout,
        "crop_mode": p.crop_mode, "max_crops": p.max_crops, "overlap_margins": list(p.overlap_margins),
        "use_col_tokens": p.use_col_tokens, "pad_value": p.pad_value,
        "prompt_type": f.prompt_type, "message_formatting": f.message_formatting,
        "system_prompt_kind": f.system_prompt_kind, "always_start_with_space": f.always_start_with_space,
        "default_inference_len": f.default_inference_len, "multi_annotation_weighting": f.multi_annotation_weighting,
    }


# What MolmoE's release config.json states for settings the model does not vary (the remote
# `config_molmoe.py` defaults differ for some, e.g. rope_impl "cockatoo").
_MOLMOE_RELEASE_FIXED = {
    "rope_impl": "llama", "rope_full_precision": True, "float32_attention": True, "attention_type": "sdpa",
    "layer_norm_with_affine": True, "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False,
    "fix_image_input_idx": 2, "use_cls_feature": False, "unconditioned": False, "alibi": False,
    "moe_dropless": True, "moe_mlp_impl": "sparse", "moe_shared_expert": False,
}


def to_hf_release(cfg) -> dict[str, Any]:
    """The release config.json for cfg: HF-style fields (remote code `config_molmo.py`) for dense models,
    the official dict in the remote code's spelling (`config_molmoe.py`) for MolmoE."""
    llm = cfg.llm
    if llm.block_type == "moe":
        d = to_official(cfg)
        d["image_pooling_2d"] = {v: k for k, v in _LEGACY_NAMES.items()}.get(d["image_pooling_2d"],
                                                                          d["image_pooling_2d"])
        return {"architectures": ["MolmoForCausalLM"], "model_type": "molmo", **d, **_MOLMOE_RELEASE_FIXED, "auto_map": {
            "AutoConfig": "config_molmoe.MolmoConfig", "AutoModelForCausalLM": "modeling_molmoe.MolmoForCausalLM"},
            "torch_dtype": "float32", "use_cache": True}
    return {
        "architectures": ["MolmoForCausalLM"], "model_type": "molmo",
        "auto_map": {"AutoConfig": "config_molmo.MolmoConfig",
                     "AutoModelForCausalLM": "modeling_molmo.MolmoForCausalLM"},
        "hidden_size": llm.d_model, "intermediate_size": 2 * llm.mlp_hidden, "num_attention_heads": llm.n_heads,
        "num_key_value_heads": llm.n_kv_heads, "num_hidden_layers": llm.n_layers,
        "layer_norm_eps": llm.norm_eps, "layer_norm_type": llm.norm_type, "rope_theta": llm.rope_theta,
        "qkv_bias": llm.qkv_bias, "attention_layer_norm": llm.qk_norm, "norm_after": llm.norm_after,
        "clip_qkv": None, "vocab_size": llm.vocab_size, "embedding_size": llm.embedding_size,
        "max_position_embeddings": llm.max_sequence_length, "use_position_ids": True, "weight_tying": False,
        "tie_word_embeddings": False, "initializer_range": 0.02, "torch_dtype": "float32", "use_cache": True,
    }
