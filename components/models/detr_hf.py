"""DETR weights and configs to and from the Hugging Face layout (``DetrForObjectDetection``): config.json +
model.safetensors.

Users start from released checkpoints (``facebook/detr-resnet-50`` and the
like, as a folder on disk) and take their own weights back out in the form
``transformers.DetrForObjectDetection.from_pretrained`` loads. Only torch,
safetensors and json are used; ``transformers`` is never imported.

Two backbone layouts, both read, either written (``backbone_layout``):
- ``"timm"`` (the released checkpoints; HF's default ``use_timm_backbone``):
  ``model.backbone.conv_encoder.model.<torchvision name>`` — timm's ResNet
  names are torchvision's, so they map one to one onto ``backbone.*``;
- ``"hf"`` (``use_timm_backbone=False``, HF's own ResNet, no timm needed):
  ``...embedder.embedder.{convolution,normalization}`` → ``conv1``/``bn1``;
  ``...encoder.stages.s.layers.b.layer.j.{convolution,normalization}`` →
  ``layer{s+1}.b.conv{j+1}``/``bn{j+1}``; ``...shortcut.{convolution,normalization}``
  → ``downsample.0``/``downsample.1``.

The rest (per layer ``i``; files use the names of transformers 4, which
version 5 renames on loading — ``o_proj``, ``mlp.fc1`` — and both are read):
- ``model.input_projection`` → ``input_proj``; ``model.query_position_embeddings`` → ``query_embed``
- ``model.encoder.layers.i.self_attn.{q,k,v}_proj`` → ``encoder.layers.i.attn.qkv`` (stacked q, k, v);
  ``self_attn.out_proj`` → ``attn.proj``; ``self_attn_layer_norm`` → ``ln_1``; ``fc1``/``fc2`` →
  ``mlp.fc1``/``mlp.fc2``; ``final_layer_norm`` → ``ln_2``
- ``model.decoder.layers.i``: the same, with ``encoder_attn`` → ``cross_attn``, ``encoder_attn_layer_norm``
  → ``ln_2`` and ``final_layer_norm`` → ``ln_3``; ``model.decoder.layernorm`` → ``decoder_norm``
- ``class_labels_classifier`` → ``class_embed``; ``bbox_predictor.layers.k`` → ``bbox_embed.layers.k``

HF freezes every BatchNorm (its DetrFrozenBatchNorm2d holds the same four
buffers as torchvision's FrozenBatchNorm2d); a tvp model with trainable
BatchNorm exports its statistics and drops ``num_batches_tracked``.
Exported configs set ``auxiliary_loss`` false: transformers 5.24's decoder,
with it true, feeds each layer the previous one's output after the final
LayerNorm and normalises the last output twice, which is neither DETR's
computation nor its own without it (tvp computes the auxiliary outputs as DETR
does, whatever ``aux_loss`` says). Pickled checkpoints are refused.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from components.models.detr import DETR, DetrConfig

# HF ResNet shapes (backbone_config of model_type "resnet") that are torchvision's ResNets.
_HF_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
}
_HIDDEN_SIZES = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}

# tvp activation <-> HF activation_function
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}

# HF keys whose value tvp's DETR cannot reproduce: key -> the values it can.
_SUPPORTED_VALUES = {"model_type": ("detr",), "position_embedding_type": ("sine",), "num_channels": (3,)}
# Training-time settings tvp's DETR lacks: predictions are unaffected, so a value other than this warns.
_TRAINING_ONLY = {"activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0}


# -- configs -------------------------------------------------------------------------------------------------
def _backbone_from_hf(config: dict) -> tuple[str, bool, str]:
    """(tvp backbone name, dilation, layout) from a HF DETR config in either version's form."""
    sub = config.get("backbone_config") or {}
    dilation = bool(config.get("dilation") or sub.get("output_stride") == 16)
    if sub.get("model_type") == "resnet":
        key = (sub.get("layer_type", "bottleneck"), tuple(sub.get("depths", (3, 4, 6, 3))))
        standard = (sub.get("embedding_size", 64) == 64 and list(sub.get("hidden_sizes", _HIDDEN_SIZES[key[0]]))
                    == _HIDDEN_SIZES[key[0]] and not sub.get("downsample_in_first_stage", False)
                    and not sub.get("downsample_in_bottleneck", False) and sub.get("hidden_act", "relu") == "relu")
        if key not in _HF_RESNETS or not standard:
            raise ValueError(f"config.json: backbone_config {key} is not a ResNet-18/34/50/101 tvp can build")
        if dilation:
            raise ValueError("config.json: dilation with HF's own ResNet backbone is not supported (HF's isn't either)")
        return _HF_RESNETS[key], False, "hf"
    if sub and sub.get("model_type") != "timm_backbone":
        raise ValueError(f"config.json: backbone_config of model_type {sub.get('model_type')!r} is not supported "
                         f"(tvp's DETR reads timm or HF ResNets)")
    if not sub and config.get("use_timm_backbone") is False:
        return _backbone_from_hf({**config, "backbone_config": {"model_type": "resnet"}})  # HF's default ResNet-50
    name = sub.get("backbone") or config.get("backbone") or "resnet50"
    if name not in ("resnet18", "resnet34", "resnet50", "resnet101"):
        raise ValueError(f"config.json: backbone {name!r} is not one of resnet18, resnet34, resnet50, resnet101")
    return name, dilation, "timm"


def detr_config_from_hf(config_json: dict, **overrides) -> DetrConfig:
    """A ``DetrConfig`` from a HF ``config.json`` dict (transformers 4 or 5 form); a setting tvp cannot run is a
    ValueError naming its key. ``overrides`` set fields HF does not record (``aux_loss``, ``dropout`` for
    fine-tuning, ``trainable_backbone_layers``, ...); ``aux_loss`` stays tvp's default, on, unless given."""
    for key, allowed in _SUPPORTED_VALUES.items():
        if key in config_json and config_json[key] not in allowed:
            raise ValueError(f"config.json: {key}={config_json[key]!r} is not supported by tvp's DETR "
                             f"(supported: {', '.join(map(repr, allowed))})")
    for first, second in (("encoder_attention_heads", "decoder_attention_heads"),
                          ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config_json.get(first, 8) != config_json.get(second, 8):
            raise ValueError(f"config.json: {first} and {second} differ; tvp's DETR has one value for both")
    for key, default in _TRAINING_ONLY.items():
        if config_json.get(key, default) != default:
            warnings.warn(f"config.json: {key}={config_json[key]} has no counterpart in tvp's DETR (only training "
                          f"differs: tvp trains as if it were {default})", stacklevel=2)
    activation = {hf: ours for ours, hf in _ACTIVATIONS.items()}.get(config_json.get("activation_function", "relu"))
    if activation is None:
        raise ValueError(f"config.json: activation_function={config_json['activation_function']!r} is not supported "
                         f"(supported: {', '.join(map(repr, _ACTIVATIONS.values()))})")
    backbone, dilation, _ = _backbone_from_hf(config_json)
    labels = config_json.get("id2label")
    num_classes = len(labels) if labels else config_json.get("num_labels", 91)
    values = dict(backbone=backbone, dilation=dilation, frozen_batch_norm=True,
                  d_model=config_json.get("d_model", 256), heads=config_json.get("encoder_attention_heads", 8),
                  encoder_layers=config_json.get("encoder_layers", 6),
                  decoder_layers=config_json.get("decoder_layers", 6),
                  ffn_dim=config_json.get("encoder_ffn_dim", 2048), dropout=config_json.get("dropout", 0.1),
                  attn_dropout=config_json.get("attention_dropout", 0.0), activation=activation, eps=1e-5,
                  norm_first=False, num_queries=config_json.get("num_queries", 100), num_classes=num_classes)
    return DetrConfig(**{**values, **overrides})


def detr_config_to_hf(cfg: DetrConfig, backbone_layout: str = "timm",
                      id2label: dict[int, str] | None = None) -> dict:
    """A HF ``config.json`` dict that transformers 4 and 5 read: the released checkpoints' form for the timm
    layout, a ``backbone_config`` of model_type "resnet" for HF's own. Class names default to ``LABEL_i``."""
    _check_exportable(cfg, backbone_layout)
    out = {"architectures": ["DetrForObjectDetection"], "model_type": "detr", "d_model": cfg.d_model,
           "encoder_attention_heads": cfg.heads, "decoder_attention_heads": cfg.heads,
           "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
           "encoder_ffn_dim": cfg.ffn_dim, "decoder_ffn_dim": cfg.ffn_dim, "dropout": cfg.dropout,
           "attention_dropout": cfg.attn_dropout, "activation_dropout": 0.0,
           "activation_function": _ACTIVATIONS[cfg.activation], "num_queries": cfg.num_queries,
           "position_embedding_type": "sine", "auxiliary_loss": False, "num_channels": 3, "dilation": cfg.dilation,
           "id2label": {str(i): (id2label or {}).get(i, f"LABEL_{i}") for i in range(cfg.num_classes)}}
    out["label2id"] = {name: int(i) for i, name in out["id2label"].items()}
    if backbone_layout == "timm":
        out.update(use_timm_backbone=True, backbone=cfg.backbone, backbone_config=None,
                   use_pretrained_backbone=False)
    else:
        kind = "basic" if cfg.backbone in ("resnet18", "resnet34") else "bottleneck"
        depths = next(depths for (k, depths), name in _HF_RESNETS.items() if name == cfg.backbone)
        out.update(use_timm_backbone=False, backbone=None, use_pretrained_backbone=False, backbone_config={
            "model_type": "resnet", "layer_type": kind, "depths": list(depths), "hidden_sizes": _HIDDEN_SIZES[kind],
            "embedding_size": 64, "hidden_act": "relu", "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False, "num_channels": 3, "out_features": ["stage4"]})
    return out


def _check_exportable(cfg: DetrConfig, backbone_layout: str) -> None:
    if backbone_layout not in ("timm", "hf"):
        raise ValueError(f"backbone_layout {backbone_layout!r} is not 'timm' or 'hf'")
    if cfg.backbone == "tiny":
        raise ValueError("the tiny backbone has no HF counterpart: only ResNet backbones export")
    if backbone_layout == "hf" and cfg.dilation:
        raise ValueError("HF's own ResNet backbone cannot dilate: export a DC5 model with backbone_layout='timm'")
    if cfg.norm_first or cfg.eps != 1e-5:
        raise ValueError("HF's DETR is post-norm with LayerNorm eps 1e-5: norm_first must be False and eps 1e-5")


# -- weights -------------------------------------------------------------------------------------------------
def _transformer_renames(cfg: DetrConfig) -> dict[str, str]:
    """tvp module path -> HF (transformers 4) module path for every plain module outside the backbone."""
    names = {"input_proj": "model.input_projection", "query_embed": "model.query_position_embeddings",
             "decoder_norm": "model.decoder.layernorm", "class_embed": "class_labels_classifier",
             **{f"bbox_embed.layers.{k}": f"bbox_predictor.layers.{k}" for k in range(3)}}
    common = {"attn.proj": "self_attn.out_proj", "ln_1": "self_attn_layer_norm", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
    for i in range(cfg.encoder_layers):
        for ours, theirs in {**common, "ln_2": "final_layer_norm"}.items():
            names[f"encoder.layers.{i}.{ours}"] = f"model.encoder.layers.{i}.{theirs}"
    for i in range(cfg.decoder_layers):
        for ours, theirs in {**common, "cross_attn.proj": "encoder_attn.out_proj", "ln_2": "encoder_attn_layer_norm",
                             "ln_3": "final_layer_norm"}.items():
            names[f"decoder.layers.{i}.{ours}"] = f"model.decoder.layers.{i}.{theirs}"
    return names


def _fused_attention(cfg: DetrConfig) -> dict[str, str]:
    """tvp fused qkv module -> HF attention module whose q_proj, k_proj, v_proj it stacks."""
    out = {f"encoder.layers.{i}.attn": f"model.encoder.layers.{i}.self_attn" for i in range(cfg.encoder_layers)}
    for i in range(cfg.decoder_layers):
        out[f"decoder.layers.{i}.attn"] = f"model.decoder.layers.{i}.self_attn"
        out[f"decoder.layers.{i}.cross_attn"] = f"model.decoder.layers.{i}.encoder_attn"
    return out


_HF_BACKBONE = "model.backbone.conv_encoder.model."


def _hf_resnet_to_torchvision(name: str) -> str:
    """A name inside HF's ResNet → torchvision's (``embedder.embedder.convolution.weight`` → ``conv1.weight``)."""
    if m := re.match(r"embedder\.embedder\.(convolution|normalization)\.(.+)$", name):
        return f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"
    if m := re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.(.+)$", name):
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}.{m[4]}"
    if m := re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)\.(.+)$",
                     name):
        return f"layer{int(m[1]) + 1}.{m[2]}.{'conv' if m[4] == 'convolution' else 'bn'}{int(m[3]) + 1}.{m[5]}"
    raise ValueError(f"{name!r} is not a parameter of HF's ResNet backbone")


def _torchvision_to_hf_resnet(name: str) -> str:
    """The inverse of ``_hf_resnet_to_torchvision``."""
    if name.startswith(("conv1.", "bn1.")):
        kind, rest = name.split(".", 1)
        return f"embedder.embedder.{'convolution' if kind == 'conv1' else 'normalization'}.{rest}"
    match = re.match(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.*)$", name)
    if match:
        stage, block, kind, j, rest = match.groups()
        return (f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(j) - 1}."
                f"{'convolution' if kind == 'conv' else 'normalization'}.{rest}")
    match = re.match(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.*)$", name)
    if match:
        stage, block, k, rest = match.groups()
        return (f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut."
                f"{'convolution' if k == '0' else 'normalization'}.{rest}")
    raise ValueError(f"{name!r} has no place in HF's ResNet backbone")


def _canonical_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4 names (those of files) for keys in either version's names; ``num_batches_tracked`` dropped."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("model.backbone.model."):
            key = _HF_BACKBONE + key.removeprefix("model.backbone.model.")
        key = re.sub(r"\.o_proj\.", ".out_proj.", key)
        key = re.sub(r"(layers\.\d+)\.mlp\.(fc[12])\.", r"\1.\2.", key)
        out[key] = value
    return out


def _expected(cfg: DetrConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in DETR(cfg).state_dict().items()}


def weights_from_hf(state: dict[str, torch.Tensor], cfg: DetrConfig) -> dict[str, torch.Tensor]:
    """tvp state dict of ``DETR(cfg)`` from a HF ``DetrForObjectDetection`` one (either backbone layout, either
    version's names). A missing tensor is a KeyError naming it; a key with no place, or a shape that disagrees
    with ``cfg``, a ValueError naming it. Trainable BatchNorm (``frozen_batch_norm`` off) gets
    ``num_batches_tracked`` 0."""
    hf = _canonical_hf(state)
    ours: dict[str, torch.Tensor] = {}
    for key in [k for k in hf if k.startswith(_HF_BACKBONE)]:
        inner = key.removeprefix(_HF_BACKBONE)
        name = _hf_resnet_to_torchvision(inner) if inner.startswith(("embedder.", "encoder.")) else inner
        ours["backbone." + name] = hf.pop(key)
    for our_module, hf_module in _transformer_renames(cfg).items():
        for param in ("weight", "bias"):
            if f"{hf_module}.{param}" in hf:
                ours[f"{our_module}.{param}"] = hf.pop(f"{hf_module}.{param}")
    for our_module, hf_module in _fused_attention(cfg).items():
        for param in ("weight", "bias"):
            names = [f"{hf_module}.{part}_proj.{param}" for part in "qkv"]
            if all(name in hf for name in names):
                ours[f"{our_module}.qkv.{param}"] = torch.cat([hf.pop(name) for name in names])
    if hf:
        raise ValueError(f"HF checkpoint has {len(hf)} key(s) tvp's DETR has no place for, e.g. {sorted(hf)[:3]} "
                         f"(do the config's layers and backbone match the weights?)")
    expected = _expected(cfg)
    for key in expected:
        if key.endswith("num_batches_tracked"):
            ours[key] = torch.tensor(0, dtype=torch.long)
        elif key not in ours:
            raise KeyError(f"HF checkpoint lacks the tensor for {key}")
    for key, value in ours.items():
        if key not in expected:
            raise ValueError(f"{key}: the checkpoint's backbone has no place in the config's {cfg.backbone}")
        if value.shape != expected[key]:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not match the config's {tuple(expected[key])}")
    return ours


def weights_to_hf(state: dict[str, torch.Tensor], cfg: DetrConfig,
                  backbone_layout: str = "timm") -> dict[str, torch.Tensor]:
    """HF ``DetrForObjectDetection`` state dict (transformers 4 names, as files hold them) from a tvp ``DETR`` one;
    every tensor contiguous and owning its storage, as safetensors requires."""
    _check_exportable(cfg, backbone_layout)
    ours = {k: v.detach() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    hf: dict[str, torch.Tensor] = {}
    for key in [k for k in ours if k.startswith("backbone.")]:
        inner = key.removeprefix("backbone.")
        hf[_HF_BACKBONE + (inner if backbone_layout == "timm" else _torchvision_to_hf_resnet(inner))] = ours.pop(key)
    for our_module, hf_module in _transformer_renames(cfg).items():
        for param in ("weight", "bias"):
            if f"{our_module}.{param}" in ours:
                hf[f"{hf_module}.{param}"] = ours.pop(f"{our_module}.{param}")
    for our_module, hf_module in _fused_attention(cfg).items():
        for param in ("weight", "bias"):
            q, k, v = ours.pop(f"{our_module}.qkv.{param}").chunk(3, dim=0)
            for part, tensor in zip("qkv", (q, k, v)):
                hf[f"{hf_module}.{part}_proj.{param}"] = tensor
    if ours:
        raise ValueError(f"state dict has {len(ours)} key(s) with no place in the HF layout, e.g. {sorted(ours)[:3]}")
    return {k: v.clone().contiguous() for k, v in hf.items()}


# -- folders -------------------------------------------------------------------------------------------------
def import_hf_folder(path: str | Path, **overrides) -> tuple[DetrConfig, dict[str, torch.Tensor]]:
    """(config, tvp state dict) from a HF ``DetrForObjectDetection`` folder (config.json + model.safetensors);
    ``overrides`` as ``detr_config_from_hf``."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    cfg = detr_config_from_hf(json.loads((folder / "config.json").read_text()), **overrides)
    if not (folder / "model.safetensors").is_file():
        pickled = [n for n in ("pytorch_model.bin", "model.pth") if (folder / n).exists()]
        raise FileNotFoundError(f"{folder} has no model.safetensors" + (
            f" (it holds {pickled[0]}; tvp does not unpickle checkpoints: convert it once where you trust the file,"
            f" e.g. DetrForObjectDetection.from_pretrained(folder).save_pretrained(folder))" if pickled else ""))
    return cfg, weights_from_hf(load_file(str(folder / "model.safetensors")), cfg)


def export_hf_folder(path: str | Path, cfg: DetrConfig, state: dict[str, torch.Tensor], *,
                     backbone_layout: str = "timm", id2label: dict[int, str] | None = None) -> Path:
    """Write config.json + model.safetensors that ``transformers.DetrForObjectDetection.from_pretrained`` loads
    (the timm layout needs timm where it is loaded; ``backbone_layout="hf"`` does not)."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = weights_to_hf(state, cfg, backbone_layout)
    save_file({k: v.cpu() for k, v in weights.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = detr_config_to_hf(cfg, backbone_layout, id2label)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder

