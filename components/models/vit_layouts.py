"""ViT weights and configs to and from timm's and torchvision's layouts.

Users start from released checkpoints (a timm hub folder on disk,
``config.json`` + ``model.safetensors``; a torchvision ``vit_b_16`` state dict
loaded by the caller with ``torch.load(path, weights_only=True)``) and take
their own weights back out in the same forms. Only torch, safetensors and json
are used; neither timm nor torchvision is imported.

Name mapping, tvp → timm → torchvision (per block ``i``; ``L.i`` is torchvision's
``encoder.layers.encoder_layer_i``):
- ``patch_embed.proj`` → ``patch_embed.proj`` → ``conv_proj``
- ``cls_token`` → ``cls_token`` → ``class_token``
- ``pos_embed`` → ``pos_embed`` → ``encoder.pos_embedding``
- ``encoder.layers.i.ln_1`` → ``blocks.i.norm1`` → ``L.i.ln_1``
- ``encoder.layers.i.attn.qkv`` → ``blocks.i.attn.qkv`` → ``L.i.self_attention.in_proj_{weight,bias}``
- ``encoder.layers.i.attn.proj`` → ``blocks.i.attn.proj`` → ``L.i.self_attention.out_proj``
- ``encoder.layers.i.ln_2`` → ``blocks.i.norm2`` → ``L.i.ln_2``
- ``encoder.layers.i.mlp.fc1``, ``fc2`` → ``blocks.i.mlp.fc1``, ``fc2`` → ``L.i.mlp.0``, ``mlp.3``
- ``ln_post`` → ``norm`` → ``encoder.ln``
- ``head`` → ``head`` → ``heads.head``

The fused QKV projection stacks q, k, v (each heads × head width, head-major)
in all three layouts, so its tensors copy unchanged. The hybrid (ResNet-50
backbone) has no counterpart: timm's R50 hybrids use a ResNetV2 with group norm
and weight standardisation, and torchvision has none; its converters refuse it,
and ``hybrid_backbone_from_torchvision`` loads torchvision's ImageNet ResNet-50
into its backbone instead. Pickled checkpoints are never read here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from components.models.vit import VIT_SIZES, ViTConfig, VisionTransformer, vit_config

# (tvp, timm) name prefixes; ``{i}`` is a block index. Most specific first.
_TIMM_NAMES = [
    ("encoder.layers.{i}.ln_1.", "blocks.{i}.norm1."),
    ("encoder.layers.{i}.attn.qkv.", "blocks.{i}.attn.qkv."),
    ("encoder.layers.{i}.attn.proj.", "blocks.{i}.attn.proj."),
    ("encoder.layers.{i}.ln_2.", "blocks.{i}.norm2."),
    ("encoder.layers.{i}.mlp.fc1.", "blocks.{i}.mlp.fc1."),
    ("encoder.layers.{i}.mlp.fc2.", "blocks.{i}.mlp.fc2."),
    ("patch_embed.proj.", "patch_embed.proj."),
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("ln_post.", "norm."),
    ("head.", "head."),
]

# (tvp, torchvision) name prefixes.
_TORCHVISION_NAMES = [
    ("encoder.layers.{i}.ln_1.", "encoder.layers.encoder_layer_{i}.ln_1."),
    ("encoder.layers.{i}.attn.qkv.weight", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"),
    ("encoder.layers.{i}.attn.qkv.bias", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias"),
    ("encoder.layers.{i}.attn.proj.", "encoder.layers.encoder_layer_{i}.self_attention.out_proj."),
    ("encoder.layers.{i}.ln_2.", "encoder.layers.encoder_layer_{i}.ln_2."),
    ("encoder.layers.{i}.mlp.fc1.", "encoder.layers.encoder_layer_{i}.mlp.0."),
    ("encoder.layers.{i}.mlp.fc2.", "encoder.layers.encoder_layer_{i}.mlp.3."),
    ("patch_embed.proj.", "conv_proj."),
    ("cls_token", "class_token"),
    ("pos_embed", "encoder.pos_embedding"),
    ("ln_post.", "encoder.ln."),
    ("head.", "heads.head."),
]


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)"))


def _rename(state: dict[str, torch.Tensor], pairs: list[tuple[str, str]], source: str
            ) -> dict[str, torch.Tensor]:
    """Keys renamed by the first (from, to) prefix pair that matches; a key none matches is a ValueError."""
    rules = [(_pattern(a), b) for a, b in pairs]
    out, unplaced = {}, []
    for key, value in state.items():
        for pattern, target in rules:
            match = pattern.match(key)
            if match:
                prefix = target.replace("{i}", match.group(1)) if match.groups() else target
                out[prefix + key[match.end():]] = value
                break
        else:
            unplaced.append(key)
    if unplaced:
        raise ValueError(f"{len(unplaced)} key(s) of the {source} state dict have no place in the target layout, "
                         f"e.g. {sorted(unplaced)[:3]}")
    return out


def _refuse_hybrid(weights: dict[str, torch.Tensor], layout: str) -> None:
    if any(key.startswith("patch_embed.backbone.") for key in weights):
        raise ValueError(f"a hybrid ViT (ResNet-50 backbone) has no {layout} layout: {layout}'s hybrids, if any, "
                         "use a different ResNet")


def _owned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors owning their storage (what safetensors writes)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


# -- timm ----------------------------------------------------------------------------------------------------
def weights_to_timm(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` state dict from a tvp one (``head.*`` only where tvp has a head)."""
    _refuse_hybrid(weights, "timm")
    return _owned(_rename(weights, _TIMM_NAMES, "tvp"))


def weights_from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tvp state dict from a timm ``VisionTransformer`` one (class token, learned positions, token pooling;
    a key of another variant — ``reg_token``, ``fc_norm``, layer scale ``ls1``, ``norm_pre`` — is a ValueError)."""
    return _rename(state, [(b, a) for a, b in _TIMM_NAMES], "timm")


# Arguments of timm's VisionTransformer: the values tvp's ViT reproduces (key -> allowed values).
_TIMM_FIXED = {
    "in_chans": (3,), "global_pool": ("token",), "class_token": (True,), "qkv_bias": (True,), "qk_norm": (False,),
    "proj_bias": (True,), "init_values": (None,), "no_embed_class": (False,), "reg_tokens": (0,),
    "pre_norm": (False,), "final_norm": (True,), "fc_norm": (None, False), "pos_embed": ("learn",),
    "scale_attn_norm": (False,), "scale_mlp_norm": (False,), "dynamic_img_pad": (False,),
    "embed_layer": (None,), "norm_layer": (None, "layernorm"), "block_fn": (None,), "mlp_layer": (None,),
    "attn_layer": (None, "", "attn"), "embed_norm_layer": (None,), "pool_include_prefix": (False,),
}
# Arguments that change training or start-up only, not the function: read and left out.
_TIMM_IGNORED = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "weight_init", "fix_init", "dynamic_img_size"}
# timm arguments that are tvp config fields: timm key -> tvp field.
_TIMM_CONFIG_FIELDS = {"patch_size": "patch_size", "embed_dim": "width", "depth": "layers", "num_heads": "heads",
                       "mlp_ratio": "mlp_ratio", "num_classes": "num_classes", "drop_path_rate": "drop_path_rate",
                       "attn_drop_rate": "attn_dropout", "proj_drop_rate": "dropout"}
_TIMM_ACTIVATIONS = {None: "gelu", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu",
                     "relu": "relu"}
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
# timm's registered plain ViTs (their entry points set only patch and size), by (size, patch).
TIMM_ARCHITECTURES = {
    ("Ti", 16): "vit_tiny_patch16_224", ("S", 8): "vit_small_patch8_224", ("S", 16): "vit_small_patch16_224",
    ("S", 32): "vit_small_patch32_224", ("B", 8): "vit_base_patch8_224", ("B", 16): "vit_base_patch16_224",
    ("B", 32): "vit_base_patch32_224", ("L", 14): "vit_large_patch14_224", ("L", 16): "vit_large_patch16_224",
    ("L", 32): "vit_large_patch32_224", ("H", 14): "vit_huge_patch14_224",
}


def timm_model_args(cfg: ViTConfig) -> dict:
    """Keyword arguments of timm's ``VisionTransformer`` (and ``create_model``) that build ``cfg``'s network;
    JSON-serialisable, as a timm ``config.json`` records them under ``model_args``."""
    if cfg.backbone != "patches":
        raise ValueError("a hybrid ViT (ResNet-50 backbone) has no timm counterpart: timm's R50 hybrids use ResNetV2")
    if cfg.eps != 1e-6:
        raise ValueError(f"timm's ViT LayerNorms have eps 1e-6; this config has {cfg.eps}")
    args = dict(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.layers,
                num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, num_classes=cfg.num_classes, global_pool="token",
                class_token=True, qkv_bias=True)
    if cfg.activation != "gelu":
        args["act_layer"] = cfg.activation
    for key, value in (("drop_path_rate", cfg.drop_path_rate), ("attn_drop_rate", cfg.attn_dropout),
                       ("proj_drop_rate", cfg.dropout)):
        if value:
            args[key] = value
    return args


def timm_architecture(cfg: ViTConfig) -> str:
    """The registered timm name of ``cfg``'s size and patch (``vit_base_patch16_224``), or that one when timm
    registers none: ``model_args`` then carry every size, and timm's entry points let them override theirs."""
    size = next((name for name, dims in VIT_SIZES.items() if dims == (cfg.width, cfg.layers, cfg.heads)), None)
    return TIMM_ARCHITECTURES.get((size, cfg.patch_size), "vit_base_patch16_224")


def config_from_timm(architecture: str, model_args: dict | None = None, *, num_classes: int | None = None,
                     image_size: int | None = None) -> ViTConfig:
    """A ``ViTConfig`` from a timm architecture name (``vit_base_patch16_384``, ``deit_small_patch16_224``)
    and the ``model_args`` that override it. A setting tvp cannot reproduce is a ValueError naming it.

    Without ``model_args`` the name must say the size; ``image_size``/``num_classes`` (say from a hub folder's
    ``pretrained_cfg``) apply where ``model_args`` leave them out. LayerNorm eps is timm's 1e-6."""
    args = dict(model_args or {})
    values: dict = {"eps": 1e-6, "num_classes": 1000 if num_classes is None else num_classes}
    match = re.match(r"^(?:vit|deit)_(tiny|small|base|large|huge)_patch(\d+)_(\d+)$", architecture)
    if match:
        width, layers, heads = VIT_SIZES[_TIMM_SIZES[match.group(1)]]
        values.update(width=width, layers=layers, heads=heads, patch_size=int(match.group(2)),
                      image_size=int(match.group(3)))
    elif not {"embed_dim", "depth", "num_heads", "patch_size"} <= args.keys():
        raise ValueError(f"timm architecture {architecture!r} is not a plain ViT tvp knows by name; model_args "
                         f"must give embed_dim, depth, num_heads and patch_size")
    if image_size is not None:
        values["image_size"] = image_size
    for key in sorted(args):
        value = args[key]
        if key in _TIMM_FIXED:
            if value not in _TIMM_FIXED[key]:
                raise ValueError(f"timm model_args: {key}={value!r} is not supported by tvp's ViT "
                                 f"(supported: {', '.join(map(repr, _TIMM_FIXED[key]))})")
        elif key == "act_layer":
            if value not in _TIMM_ACTIVATIONS:
                raise ValueError(f"timm model_args: act_layer={value!r} is not supported by tvp's ViT")
            values["activation"] = _TIMM_ACTIVATIONS[value]
        elif key == "img_size":
            sides = [value, value] if isinstance(value, int) else list(value)
            if sides[0] != sides[1]:
                raise ValueError(f"timm model_args: img_size={value!r}: tvp's ViT takes square images")
            values["image_size"] = sides[0]
        elif key in _TIMM_CONFIG_FIELDS:
            values[_TIMM_CONFIG_FIELDS[key]] = value
        elif key not in _TIMM_IGNORED:
            raise ValueError(f"timm model_args: {key!r} is not an argument tvp's ViT knows")
    if isinstance(values.get("patch_size"), (list, tuple)):
        values["patch_size"] = values["patch_size"][0]
    return ViTConfig(**values)



def _check_against(cfg: ViTConfig, weights: dict[str, torch.Tensor]) -> None:
    """Every key and shape of ``cfg``'s model, and nothing else; a difference is a ValueError naming it."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in VisionTransformer(cfg).state_dict().items()}
    missing = sorted(expected.keys() - weights.keys())
    extra = sorted(weights.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"weights do not fit the config: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, shape in expected.items():
        if weights[key].shape != shape:
            raise ValueError(f"{key}: shape {tuple(weights[key].shape)} does not match the config's {tuple(shape)}")


def import_timm_folder(path: str | Path) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, tvp state dict) from a timm hub folder (``config.json`` + ``model.safetensors``), as
    ``save_for_hf``/``push_to_hub`` write it and ``timm/vit_*`` repositories hold it."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a timm model folder")
    config = json.loads((folder / "config.json").read_text())
    pretrained = config.get("pretrained_cfg", config)
    input_size = pretrained.get("input_size")
    num_classes = config.get("num_classes", pretrained.get("num_classes"))
    if config.get("global_pool", "token") != "token":
        raise ValueError(f"config.json: global_pool={config['global_pool']!r}: tvp's ViT pools the class token")
    cfg = config_from_timm(config["architecture"], config.get("model_args"), num_classes=num_classes,
                           image_size=None if input_size is None else int(input_size[-1]))
    if not (folder / "model.safetensors").is_file():
        pickled = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt")]
        raise FileNotFoundError(f"{folder} has no model.safetensors" + (
            f" ({pickled[0]} is pickled: tvp does not unpickle checkpoints; convert it once where you trust the "
            "file, e.g. timm's save_for_hf(model, folder, safe_serialization=True))" if pickled else ""))
    weights = weights_from_timm(load_file(str(folder / "model.safetensors")))
    _check_against(cfg, weights)
    return cfg, weights


def timm_data_config(path: str | Path) -> dict:
    """The preprocessing a timm folder records (``mean``, ``std``, ``input_size``, ``interpolation``,
    ``crop_pct``, ``label_names`` where present): what its weights expect of the images."""
    config = json.loads((Path(path) / "config.json").read_text())
    pretrained = config.get("pretrained_cfg", config)
    keys = ("mean", "std", "input_size", "interpolation", "crop_pct", "crop_mode")
    out = {k: pretrained[k] for k in keys if k in pretrained}
    if "label_names" in config or "label_names" in pretrained:
        out["label_names"] = config.get("label_names", pretrained.get("label_names"))
    return out


def export_timm_folder(cfg: ViTConfig, weights: dict[str, torch.Tensor], path: str | Path, *,
                       mean: tuple[float, float, float], std: tuple[float, float, float],
                       label_names: list[str] | None = None, interpolation: str = "bicubic",
                       crop_pct: float = 1.0) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``timm.create_model("local-dir:" + folder,
    pretrained=True)`` loads (and ``import_timm_folder`` reads back). ``mean``/``std`` are the normalisation
    the weights were trained with (timm's data config records them); ``label_names`` the classes in head order."""
    from safetensors.torch import save_file

    _check_against(cfg, weights)
    model_args = timm_model_args(cfg)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    pretrained = {"input_size": [3, cfg.image_size, cfg.image_size], "fixed_input_size": True,
                  "interpolation": interpolation, "crop_pct": crop_pct, "crop_mode": "center",
                  "mean": list(mean), "std": list(std), "num_classes": cfg.num_classes,
                  "first_conv": "patch_embed.proj", "classifier": "head", "custom_load": False}
    config = {"architecture": timm_architecture(cfg), "num_classes": cfg.num_classes, "num_features": cfg.width,
              "global_pool": "token", "model_args": model_args, "pretrained_cfg": pretrained}
    if label_names is not None:
        if len(label_names) != cfg.num_classes:
            raise ValueError(f"{len(label_names)} label names for {cfg.num_classes} classes")
        config["label_names"] = list(label_names)
    save_file({k: v.cpu() for k, v in weights_to_timm(weights).items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


# -- torchvision ---------------------------------------------------------------------------------------------
# torchvision's builders: name -> tvp preset (all 224 pixels, 1000 classes, eps 1e-6).
TORCHVISION_ARCHITECTURES = {"vit_b_16": "B/16", "vit_b_32": "B/32", "vit_l_16": "L/16", "vit_l_32": "L/32",
                             "vit_h_14": "H/14"}


def weights_to_torchvision(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``VisionTransformer`` state dict from a tvp one. torchvision always has ``heads.head``:
    a tvp tower without a head leaves it out (load with ``strict=False``)."""
    _refuse_hybrid(weights, "torchvision")
    return _owned(_rename(weights, _TORCHVISION_NAMES, "tvp"))


def weights_from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """tvp state dict from a torchvision ``VisionTransformer`` one (today's ``mlp.0``/``mlp.3`` names or the
    older ``mlp.linear_1``/``linear_2``). A ``heads.pre_logits`` layer (``representation_size``) or a conv
    stem has no place in tvp's ViT: a ValueError."""
    state = {re.sub(r"\.mlp\.linear_([12])\.", lambda m: f".mlp.{3 * (int(m.group(1)) - 1)}.", k): v
             for k, v in state.items()}
    return _rename(state, [(b, a) for a, b in _TORCHVISION_NAMES], "torchvision")


def config_from_torchvision(architecture: str, **overrides) -> ViTConfig:
    """The config of a torchvision builder (``vit_b_16``, ...): its preset, 1000 classes, with fields overridden
    (``image_size=384`` for the SWAG weights, ``num_classes``)."""
    if architecture not in TORCHVISION_ARCHITECTURES:
        raise ValueError(f"unknown torchvision ViT {architecture!r}; known: {', '.join(TORCHVISION_ARCHITECTURES)}")
    return vit_config(TORCHVISION_ARCHITECTURES[architecture], **{"num_classes": 1000, **overrides})


def torchvision_kwargs(cfg: ViTConfig) -> dict:
    """Keyword arguments of ``torchvision.models.VisionTransformer`` that build ``cfg``'s network (``norm_layer``
    carries the eps; a tower without a head gets torchvision's 1000-class one, which the weights leave out)."""
    from functools import partial

    if cfg.backbone != "patches":
        raise ValueError("a hybrid ViT (ResNet-50 backbone) has no torchvision counterpart")
    if cfg.activation != "gelu":
        raise ValueError(f"torchvision's ViT uses exact GELU; this config has {cfg.activation}")
    return dict(image_size=cfg.image_size, patch_size=cfg.patch_size, num_layers=cfg.layers, num_heads=cfg.heads,
                hidden_dim=cfg.width, mlp_dim=int(cfg.width * cfg.mlp_ratio), dropout=cfg.dropout,
                attention_dropout=cfg.attn_dropout, num_classes=cfg.num_classes or 1000,
                norm_layer=partial(torch.nn.LayerNorm, eps=cfg.eps))


def hybrid_backbone_from_torchvision(resnet_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``patch_embed.backbone.*`` weights of a hybrid ViT from a torchvision ``resnet50`` state dict (its stem
    and stages 1–3; ``layer4`` and ``fc`` are dropped). Load with ``strict=False``: the rest keeps its values."""
    kept = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    return {"patch_embed.backbone." + k: v for k, v in resnet_state.items() if k.startswith(kept)}
