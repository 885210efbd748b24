"""CLIP weights and configs to and from open_clip's layout and Hugging Face's (``CLIPModel``).

Users start from released checkpoints (an open_clip hub folder,
``open_clip_config.json`` + ``open_clip_model.safetensors``; a Hugging Face
folder, ``config.json`` + ``model.safetensors``; or a state dict the caller
loaded) and take their own weights back out in forms that
``open_clip.create_model("local-dir:FOLDER")`` and
``transformers.CLIPModel.from_pretrained(FOLDER)`` load. Only torch,
safetensors and json are used; neither library is imported. Pickled
checkpoints are never read.

Name mapping, tvp → open_clip → HF (per block ``i``; ``V.i`` is open_clip's
``visual.transformer.resblocks.i``, ``T.i`` its ``transformer.resblocks.i``;
HF's are ``vision_model.encoder.layers.i`` and ``text_model.encoder.layers.i``):
- ``visual.patch_embed.proj.weight`` → ``visual.conv1.weight`` → ``vision_model.embeddings.patch_embedding.weight``
- ``visual.cls_token`` (1, 1, D) → ``visual.class_embedding`` (D) → ``vision_model.embeddings.class_embedding`` (D)
- ``visual.pos_embed`` (1, T, D) → ``visual.positional_embedding`` (T, D) →
  ``vision_model.embeddings.position_embedding.weight`` (T, D)
- ``visual.ln_pre`` → ``visual.ln_pre`` → ``vision_model.pre_layrnorm`` (sic)
- ``….encoder.layers.i.ln_1``, ``ln_2`` → ``….ln_1``, ``ln_2`` → ``….layer_norm1``, ``layer_norm2``
- ``….attn.qkv`` → ``….attn.in_proj_{weight,bias}`` → ``….self_attn.{q,k,v}_proj`` (q, k, v stacked in tvp and
  open_clip, head-major within each)
- ``….attn.proj`` → ``….attn.out_proj`` → ``….self_attn.out_proj``
- ``….mlp.fc1``, ``fc2`` → ``….mlp.c_fc``, ``c_proj`` → ``….mlp.fc1``, ``fc2``
- ``visual.ln_post`` → ``visual.ln_post`` → ``vision_model.post_layernorm``
- ``visual_proj.weight`` (E, D) → ``visual.proj`` (D, E) → ``visual_projection.weight`` (E, D)
- ``text.token_embed`` → ``token_embedding`` → ``text_model.embeddings.token_embedding``
- ``text.pos_embed`` (1, L, D) → ``positional_embedding`` (L, D) → ``text_model.embeddings.position_embedding.weight``
- ``text.ln_final`` → ``ln_final`` → ``text_model.final_layer_norm``
- ``text_proj.weight`` (E, D) → ``text_projection`` (D, E) → ``text_projection.weight`` (E, D)
- ``logit_scale`` → ``logit_scale`` (a scalar, or (1,) with open_clip's ``nonscalar_logit_scale``) → ``logit_scale``

Both layouts have CLIP's image tower: ``ln_pre`` and patches without bias
(tvp's ``ln_pre=True``, ``patch_bias=False``). A tvp model with a patch bias
(the configs before these options) exports to open_clip with that bias folded
into the patch rows of its position table (the same function; importing it back
gives ``patch_bias=False``) and, without ``ln_pre``, open_clip's ``no_ln_pre``;
Hugging Face's tower has no such switch, so it takes ``ln_pre`` models only.

Text pooling: tvp takes the last non-pad position, open_clip the largest id
(the end-of-text token, 49407 in CLIP's vocabulary), HF the first
``eos_token_id``: the same position for open_clip-tokenised text (see
``clip.py``). Exported HF configs name ``vocab_size - 1`` as the end-of-text
id, as CLIP's vocabulary has it, unless told otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch

from components.models.clip import CLIP, CLIPConfig, TextConfig
from components.models.vit import ViTConfig

Tensors = tuple[torch.Tensor, ...]
# One tvp tensor ↔ one or more tensors of another layout: (tvp name, their names, tvp → theirs, theirs → tvp).
Entry = tuple[str, tuple[str, ...], Callable[[torch.Tensor], Tensors], Callable[[Tensors], torch.Tensor]]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation OpenAI's CLIP weights were trained with
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _same(name: str, theirs: str) -> Entry:
    return name, (theirs,), lambda t: (t,), lambda ts: ts[0]


def _reshaped(name: str, theirs: str, their_shape: Callable[[torch.Size], tuple[int, ...]],
              our_shape: tuple[int, ...]) -> Entry:
    return name, (theirs,), lambda t: (t.reshape(their_shape(t.shape)),), lambda ts: ts[0].reshape(our_shape)


def _transposed(name: str, theirs: str) -> Entry:
    return name, (theirs,), lambda t: (t.t(),), lambda ts: ts[0].t()


def _split3(name: str, theirs: tuple[str, str, str]) -> Entry:
    return name, theirs, lambda t: tuple(t.chunk(3, dim=0)), lambda ts: torch.cat(ts, dim=0)


def _affine(ours: str, theirs: str) -> list[Entry]:
    """``.weight`` and ``.bias`` of a LayerNorm or linear layer."""
    return [_same(f"{ours}.{p}", f"{theirs}.{p}") for p in ("weight", "bias")]


def _expected(cfg: CLIPConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in CLIP(cfg).state_dict().items()}


def _convert(state: dict[str, torch.Tensor], entries: list[Entry], *, to_tvp: bool, source: str,
             ignored: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Every entry's tensors renamed and reshaped one way; a missing key or one no entry takes is a ValueError."""
    state = {k: v for k, v in state.items() if not k.endswith(ignored)} if ignored else dict(state)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, forward, backward in entries:
        needed = theirs if to_tvp else (ours,)
        missing = [k for k in needed if k not in state]
        if missing:
            raise ValueError(f"the {source} state dict lacks {missing[0]} (does the config fit the weights?)")
        if to_tvp:
            out[ours] = backward(tuple(state.pop(k).detach() for k in theirs))
        else:
            out.update(zip(theirs, forward(state.pop(ours).detach())))
    if state:
        raise ValueError(f"{len(state)} key(s) of the {source} state dict have no place in the target layout, "
                         f"e.g. {sorted(state)[:3]}")
    return {k: v.clone().contiguous() for k, v in out.items()}  # owning their storage, as safetensors requires


def _check_shapes(weights: dict[str, torch.Tensor], cfg: CLIPConfig) -> None:
    """Every key and shape of ``cfg``'s model, and nothing else; a difference is a ValueError naming it."""
    expected = _expected(cfg)
    missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"weights do not fit the config: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, shape in expected.items():
        if weights[key].shape != shape:
            raise ValueError(f"{key}: shape {tuple(weights[key].shape)} does not match the config's {tuple(shape)}")


def _tower_checks(cfg: CLIPConfig, layout: str) -> None:
    if cfg.vision.backbone != "patches":
        raise ValueError(f"a hybrid image tower (ResNet-50 backbone) has no {layout} counterpart")
    if cfg.vision.num_classes:
        raise ValueError("CLIP's image tower has no classifier head (vision.num_classes must be 0)")


# -- open_clip -----------------------------------------------------------------------------------------------
def _open_clip_blocks(ours: str, theirs: str, layers: int) -> list[Entry]:
    entries: list[Entry] = []
    for i in range(layers):
        o, t = f"{ours}.{i}", f"{theirs}.{i}"
        entries += [*_affine(f"{o}.ln_1", f"{t}.ln_1"),
                    _same(f"{o}.attn.qkv.weight", f"{t}.attn.in_proj_weight"),
                    _same(f"{o}.attn.qkv.bias", f"{t}.attn.in_proj_bias"),
                    *_affine(f"{o}.attn.proj", f"{t}.attn.out_proj"), *_affine(f"{o}.ln_2", f"{t}.ln_2"),
                    *_affine(f"{o}.mlp.fc1", f"{t}.mlp.c_fc"), *_affine(f"{o}.mlp.fc2", f"{t}.mlp.c_proj")]
    return entries


def _open_clip_entries(cfg: CLIPConfig) -> list[Entry]:
    v, t = cfg.vision, cfg.text
    entries = [_same("visual.patch_embed.proj.weight", "visual.conv1.weight"),
               _reshaped("visual.cls_token", "visual.class_embedding", lambda s: (s[-1],), (1, 1, v.width)),
               _reshaped("visual.pos_embed", "visual.positional_embedding", lambda s: tuple(s[1:]),
                         (1, v.grid**2 + 1, v.width))]
    if v.ln_pre:
        entries += _affine("visual.ln_pre", "visual.ln_pre")
    entries += [*_open_clip_blocks("visual.encoder.layers", "visual.transformer.resblocks", v.layers),
                *_affine("visual.ln_post", "visual.ln_post"),
                _transposed("visual_proj.weight", "visual.proj"),
                _same("text.token_embed.weight", "token_embedding.weight"),
                _reshaped("text.pos_embed", "positional_embedding", lambda s: tuple(s[1:]),
                          (1, t.context_length, t.width)),
                *_open_clip_blocks("text.encoder.layers", "transformer.resblocks", t.layers),
                *_affine("text.ln_final", "ln_final"),
                _transposed("text_proj.weight", "text_projection"),
                _reshaped("logit_scale", "logit_scale", lambda s: (), ())]
    return entries


def weights_to_open_clip(state: dict[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """open_clip ``CLIP`` state dict (of the model ``config_to_open_clip(cfg)`` builds) from a tvp one.

    A patch bias (``patch_bias=True``, the configs before it was an option) is folded into the position rows of
    the patches, which adds it to the same tokens: the function is unchanged."""
    _tower_checks(cfg, "open_clip")
    _check_shapes(state, cfg)
    weights = dict(state)
    if cfg.vision.patch_bias:
        bias = weights.pop("visual.patch_embed.proj.bias").detach()
        pos = weights["visual.pos_embed"].detach().clone()
        pos[:, 1:] += bias
        weights["visual.pos_embed"] = pos
    return _convert(weights, _open_clip_entries(cfg), to_tvp=False, source="tvp")


def weights_from_open_clip(state: dict[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """tvp state dict from an open_clip ``CLIP`` one (a plain ViT image tower and open_clip's own text tower; the
    ``input_resolution``, ``context_length`` and ``vocab_size`` entries of OpenAI's archives are dropped).
    ``cfg`` is the model's (``config_from_open_clip``); a key or shape that does not fit it is a ValueError."""
    if cfg.vision.patch_bias:
        raise ValueError("open_clip's patch projection has no bias: the config must set vision.patch_bias=False")
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    weights = _convert(state, _open_clip_entries(cfg), to_tvp=True, source="open_clip")
    _check_shapes(weights, cfg)
    return weights


# CLIPVisionCfg / CLIPTextCfg fields (open_clip 2.x–3.x) whose value tvp's CLIP must match: key -> allowed values.
_OPEN_CLIP_VISION_FIXED = {
    "ls_init_value": (None,), "attentional_pool": (False,), "pos_embed_type": ("learnable",),
    "final_ln_after_pool": (False,), "pool_type": ("tok",), "block_type": (None, "default"), "qk_norm": (False,),
    "scaled_cosine_attn": (False,), "scale_heads": (False,), "scale_attn_inner": (False,), "scale_attn": (False,),
    "scale_fc": (False,), "timm_model_name": (None,), "input_patchnorm": (False,), "global_average_pool": (False,),
    "attn_pooler_queries": None, "attn_pooler_heads": None, "timm_model_pretrained": None, "timm_pool": None,
    "timm_proj": None, "timm_proj_bias": None, "timm_drop": None, "timm_drop_path": None,
}
_OPEN_CLIP_TEXT_FIXED = {
    "ls_init_value": (None,), "embed_cls": (False,), "no_causal_mask": (False,), "final_ln_after_pool": (False,),
    "pool_type": ("argmax", "eos"), "proj_bias": (False,), "proj_type": ("linear",), "block_type": (None, "default"),
    "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,), "scale_attn_inner": (False,),
    "scale_attn": (False,), "scale_fc": (False,), "hf_model_name": (None,), "hf_model_pretrained": None,
    "hf_proj_type": None, "hf_pooler_type": None,
}
# Fields that change training or tokenisation only, not the model's function: read and left out.
_OPEN_CLIP_IGNORED = {"patch_dropout", "output_tokens", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
                      "eos_id", "pad_id"}
_OPEN_CLIP_TOP = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
                  "nonscalar_logit_scale", "custom_text", "cast_dtype", "output_dict"}


def _tower_activation(name: str, quick_gelu: bool, sub: dict) -> str:
    kwargs = sub.get("act_kwargs") or {}
    if quick_gelu:
        if kwargs:
            raise ValueError(f"open_clip {name}: act_kwargs {kwargs} with quick_gelu: tvp's QuickGELU takes none")
        return "quick_gelu"
    if kwargs in ({}, {"approximate": "none"}):
        return "gelu"
    if kwargs == {"approximate": "tanh"}:
        return "gelu_tanh"
    raise ValueError(f"open_clip {name}: act_kwargs {kwargs} is not supported by tvp's CLIP")


def _tower_eps(name: str, sub: dict) -> float:
    kwargs = dict(sub.get("norm_kwargs") or {})
    eps = kwargs.pop("eps", 1e-5)
    if kwargs:
        raise ValueError(f"open_clip {name}: norm_kwargs {sorted(kwargs)} other than eps are not supported")
    return eps


def _check_fields(name: str, sub: dict, fixed: dict, known: set[str]) -> None:
    for key in sorted(sub):
        if key in fixed:
            allowed = fixed[key]
            if allowed is not None and sub[key] not in allowed:
                raise ValueError(f"open_clip {name}: {key}={sub[key]!r} is not supported by tvp's CLIP "
                                 f"(supported: {', '.join(map(repr, allowed))})")
        elif key not in known and key not in _OPEN_CLIP_IGNORED:
            raise ValueError(f"open_clip {name}: {key!r} is not a setting tvp's CLIP knows")


def config_from_open_clip(model_cfg: dict, *, quick_gelu: bool | None = None) -> CLIPConfig:
    """A ``CLIPConfig`` from an open_clip model config (the JSON of ``open_clip/model_configs/NAME.json``, or
    ``model_cfg`` of a hub folder's ``open_clip_config.json``): ``embed_dim``, ``vision_cfg``, ``text_cfg``,
    ``quick_gelu``. ``quick_gelu`` overrides the config's, as open_clip's ``force_quick_gelu`` does (OpenAI's
    weights need it; open_clip's ``-quickgelu`` names set it). A setting tvp cannot reproduce (a ResNet or timm
    image tower, an HF text tower, layer scale, attentional pooling, SigLIP's logit bias, ...) is a ValueError
    naming it; omitted fields take open_clip's defaults."""
    if "model_cfg" in model_cfg:
        model_cfg = model_cfg["model_cfg"]
    unknown = sorted(model_cfg.keys() - _OPEN_CLIP_TOP)
    if unknown:
        raise ValueError(f"open_clip config: {unknown[0]!r} is not supported by tvp's CLIP (a CoCa or other model?)")
    if model_cfg.get("custom_text"):
        raise ValueError("open_clip config: custom_text models keep the text tower under text.*; tvp reads CLIP's")
    if model_cfg.get("init_logit_bias") is not None:
        raise ValueError("open_clip config: init_logit_bias (SigLIP's sigmoid loss) has no counterpart in tvp's CLIP")
    vision, text = dict(model_cfg.get("vision_cfg") or {}), dict(model_cfg.get("text_cfg") or {})
    _check_fields("vision_cfg", vision, _OPEN_CLIP_VISION_FIXED,
                  {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "no_ln_pre",
                   "act_kwargs", "norm_kwargs"})
    _check_fields("text_cfg", text, _OPEN_CLIP_TEXT_FIXED,
                  {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "act_kwargs",
                   "norm_kwargs"})
    if isinstance(vision.get("layers", 12), (list, tuple)):
        raise ValueError("open_clip vision_cfg: layers as a tuple is the ModifiedResNet image tower; tvp's is a ViT")
    quick = bool(model_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if image_size[0] != image_size[1]:
            raise ValueError(f"open_clip vision_cfg: image_size={image_size!r}: tvp's ViT takes square images")
        image_size = image_size[0]
    patch_size = vision.get("patch_size", 16)
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    width = vision.get("width", 768)
    head_width = vision.get("head_width", 64)
    if width % head_width:
        raise ValueError(f"open_clip vision_cfg: width {width} is not a multiple of head_width {head_width}")
    return CLIPConfig(
        embed_dim=model_cfg.get("embed_dim", 512),
        vision=ViTConfig(image_size=image_size, patch_size=patch_size, width=width, layers=vision.get("layers", 12),
                         heads=width // head_width, mlp_ratio=vision.get("mlp_ratio", 4.0),
                         eps=_tower_eps("vision_cfg", vision),
                         activation=_tower_activation("vision_cfg", quick, vision),
                         ln_pre=not vision.get("no_ln_pre", False), patch_bias=False),
        text=TextConfig(vocab_size=text.get("vocab_size", 49408), context_length=text.get("context_length", 77),
                        width=text.get("width", 512), layers=text.get("layers", 12), heads=text.get("heads", 8),
                        mlp_ratio=text.get("mlp_ratio", 4.0), eps=_tower_eps("text_cfg", text),
                        activation=_tower_activation("text_cfg", quick, text)),
        init_logit_scale=model_cfg.get("init_logit_scale", math.log(1 / 0.07)),
    )


def config_to_open_clip(cfg: CLIPConfig) -> dict:
    """The open_clip model config (``CLIP(**it)``, ``model_cfg`` of ``open_clip_config.json``) that builds
    ``cfg``'s network; JSON-serialisable. Training-only settings (dropout, stochastic depth) are left out."""
    _tower_checks(cfg, "open_clip")
    activations = {cfg.vision.activation, cfg.text.activation}
    if "quick_gelu" in activations and activations != {"quick_gelu"}:
        raise ValueError(f"open_clip's quick_gelu is one switch for both towers; this config has "
                         f"{cfg.vision.activation} (vision) and {cfg.text.activation} (text)")
    if "relu" in activations:
        raise ValueError("open_clip's CLIP towers use GELU or QuickGELU; this config has relu")
    if cfg.vision.width % cfg.vision.heads:
        raise ValueError(f"vision width {cfg.vision.width} is not divisible by heads {cfg.vision.heads}")

    def tower(sub, values: dict) -> dict:
        if sub.activation == "gelu_tanh":
            values["act_kwargs"] = {"approximate": "tanh"}
        if sub.eps != 1e-5:
            values["norm_kwargs"] = {"eps": sub.eps}
        return values

    v, t = cfg.vision, cfg.text
    vision = tower(v, {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers,
                       "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio})
    if not v.ln_pre:
        vision["no_ln_pre"] = True
    text = tower(t, {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio})
    out = {"embed_dim": cfg.embed_dim, "vision_cfg": vision, "text_cfg": text,
           "init_logit_scale": cfg.init_logit_scale}
    if activations == {"quick_gelu"}:
        out["quick_gelu"] = True
    return out


_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")


def import_open_clip_folder(path: str | Path) -> tuple[CLIPConfig, dict[str, torch.Tensor], dict]:
    """(config, tvp state dict, ``preprocess_cfg``) from an open_clip hub folder (``open_clip_config.json`` +
    ``open_clip_model.safetensors``, as ``save_for_hf`` writes it and ``hf-hub:`` repositories hold it)."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"{folder} has no open_clip_config.json: not an open_clip model folder")
    config = json.loads((folder / "open_clip_config.json").read_text())
    cfg = config_from_open_clip(config.get("model_cfg", config))
    file = next((folder / n for n in _OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
    if file is None:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt"))
        raise FileNotFoundError(f"{folder} has no open_clip_model.safetensors" + (
            f" ({pickled[0]} is pickled: tvp does not unpickle checkpoints; convert it once where you trust the "
            "file, e.g. open_clip's save_for_hf(..., safe_serialization=True))" if pickled else ""))
    return cfg, weights_from_open_clip(load_file(str(file)), cfg), config.get("preprocess_cfg", {})


def export_open_clip_folder(path: str | Path, cfg: CLIPConfig, state: dict[str, torch.Tensor], *,
                            mean: tuple[float, float, float] = OPENAI_MEAN,
                            std: tuple[float, float, float] = OPENAI_STD) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` that ``open_clip.create_model(
    "local-dir:" + folder)`` loads (and ``import_open_clip_folder`` reads back). ``mean``/``std`` are the
    image normalisation the weights were trained with (OpenAI's unless given); tvp's tokenizer is not written."""
    from safetensors.torch import save_file

    weights = weights_to_open_clip(state, cfg)
    config = {"model_cfg": config_to_open_clip(cfg),
              "preprocess_cfg": {"mean": list(mean), "std": list(std), "interpolation": "bicubic",
                                 "resize_mode": "shortest"}}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in weights.items()}, str(folder / "open_clip_model.safetensors"),
              metadata={"format": "pt"})
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


# -- Hugging Face --------------------------------------------------------------------------------------------
def _hf_blocks(ours: str, theirs: str, layers: int) -> list[Entry]:
    entries: list[Entry] = []
    for i in range(layers):
        o, t = f"{ours}.{i}", f"{theirs}.{i}.self_attn"
        entries += [*_affine(f"{o}.ln_1", f"{theirs}.{i}.layer_norm1"),
                    *(_split3(f"{o}.attn.qkv.{p}", (f"{t}.q_proj.{p}", f"{t}.k_proj.{p}", f"{t}.v_proj.{p}"))
                      for p in ("weight", "bias")),
                    *_affine(f"{o}.attn.proj", f"{t}.out_proj"),
                    *_affine(f"{o}.ln_2", f"{theirs}.{i}.layer_norm2"),
                    *_affine(f"{o}.mlp.fc1", f"{theirs}.{i}.mlp.fc1"),
                    *_affine(f"{o}.mlp.fc2", f"{theirs}.{i}.mlp.fc2")]
    return entries


def _hf_entries(cfg: CLIPConfig) -> list[Entry]:
    v, t = cfg.vision, cfg.text
    return [_same("visual.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight"),
            _reshaped("visual.cls_token", "vision_model.embeddings.class_embedding", lambda s: (s[-1],),
                      (1, 1, v.width)),
            _reshaped("visual.pos_embed", "vision_model.embeddings.position_embedding.weight",
                      lambda s: tuple(s[1:]), (1, v.grid**2 + 1, v.width)),
            *_affine("visual.ln_pre", "vision_model.pre_layrnorm"),
            *_hf_blocks("visual.encoder.layers", "vision_model.encoder.layers", v.layers),
            *_affine("visual.ln_post", "vision_model.post_layernorm"),
            _same("visual_proj.weight", "visual_projection.weight"),
            _same("text.token_embed.weight", "text_model.embeddings.token_embedding.weight"),
            _reshaped("text.pos_embed", "text_model.embeddings.position_embedding.weight", lambda s: tuple(s[1:]),
                      (1, t.context_length, t.width)),
            *_hf_blocks("text.encoder.layers", "text_model.encoder.layers", t.layers),
            *_affine("text.ln_final", "text_model.final_layer_norm"),
            _same("text_proj.weight", "text_projection.weight"),
            _reshaped("logit_scale", "logit_scale", lambda s: (), ())]


def _check_hf_exportable(cfg: CLIPConfig) -> None:
    _tower_checks(cfg, "Hugging Face")
    if not cfg.vision.ln_pre or cfg.vision.patch_bias:
        raise ValueError("Hugging Face's CLIP image tower has pre_layrnorm and patches without bias: the config must "
                         "set vision.ln_pre=True and vision.patch_bias=False (open_clip's layout takes the others)")


def weights_to_hf(state: dict[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` state dict from a tvp one (``ln_pre`` towers without patch bias, as HF's)."""
    _check_hf_exportable(cfg)
    _check_shapes(state, cfg)
    return _convert(state, _hf_entries(cfg), to_tvp=False, source="tvp")


def weights_from_hf(state: dict[str, torch.Tensor], cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """tvp state dict from a HF ``CLIPModel`` one (the ``position_ids`` buffers older files hold are dropped);
    ``cfg`` is the model's (``config_from_hf``); a key or shape that does not fit it is a ValueError."""
    _check_hf_exportable(cfg)
    weights = _convert(state, _hf_entries(cfg), to_tvp=True, source="Hugging Face", ignored=("position_ids",))
    _check_shapes(weights, cfg)
    return weights


# tvp activation <-> HF hidden_act
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}
# HF defaults (CLIPTextConfig, CLIPVisionConfig) for keys a config.json leaves out.
_HF_TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "layer_norm_eps": 1e-5}
_HF_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                       "layer_norm_eps": 1e-5, "num_channels": 3}


def _hf_tower(name: str, sub: dict, defaults: dict) -> dict:
    values = {**defaults, **{k: v for k, v in sub.items() if k in defaults and v is not None}}
    activation = {hf: ours for ours, hf in _HF_ACTIVATIONS.items()}.get(values["hidden_act"])
    if activation is None:
        raise ValueError(f"config.json: {name}.hidden_act={values['hidden_act']!r} is not supported by tvp's CLIP "
                         f"(supported: {', '.join(map(repr, _HF_ACTIVATIONS.values()))})")
    width, hidden = values["hidden_size"], values["intermediate_size"]
    if int(width * (hidden / width)) != hidden:
        raise ValueError(f"config.json: {name}.intermediate_size {hidden} is not a whole multiple of the width")
    return {"width": width, "layers": values["num_hidden_layers"], "heads": values["num_attention_heads"],
            "mlp_ratio": hidden / width, "eps": values["layer_norm_eps"], "activation": activation, "raw": values}


def config_from_hf(config_json: dict, *, pad_id: int = 0) -> CLIPConfig:
    """A ``CLIPConfig`` from a HF ``config.json`` dict of a ``CLIPModel`` (``text_config``/``vision_config``, or
    the ``*_config_dict`` of older files; omitted keys take HF's defaults). HF's ``pad_token_id`` says nothing
    about the tokens its model reads (its tokenizer pads with the end-of-text id): ``pad_id`` is the padding of
    the tokens tvp will be given (0: open_clip's tokenizer's)."""
    if config_json.get("model_type", "clip") != "clip":
        raise ValueError(f"config.json: model_type={config_json['model_type']!r} is not supported by tvp's CLIP "
                         f"(supported: 'clip')")
    text = _hf_tower("text_config", config_json.get("text_config") or config_json.get("text_config_dict") or {},
                     _HF_TEXT_DEFAULTS)
    vision = _hf_tower("vision_config",
                       config_json.get("vision_config") or config_json.get("vision_config_dict") or {},
                       _HF_VISION_DEFAULTS)
    if vision["raw"]["num_channels"] != 3:
        raise ValueError(f"config.json: vision_config.num_channels={vision['raw']['num_channels']}: tvp's ViT "
                         f"reads RGB")
    text_raw, vision_raw = text.pop("raw"), vision.pop("raw")
    return CLIPConfig(
        embed_dim=config_json.get("projection_dim", 512),
        vision=ViTConfig(image_size=vision_raw["image_size"], patch_size=vision_raw["patch_size"], **vision,
                         ln_pre=True, patch_bias=False),
        text=TextConfig(vocab_size=text_raw["vocab_size"], context_length=text_raw["max_position_embeddings"],
                        pad_id=pad_id, **text),
        init_logit_scale=config_json.get("logit_scale_init_value", 2.6592),
    )


def config_to_hf(cfg: CLIPConfig, *, eos_token_id: int | None = None, bos_token_id: int | None = None) -> dict:
    """A HF ``config.json`` dict (``CLIPModel``) that ``transformers.CLIPConfig`` and ``from_pretrained`` read.
    ``eos_token_id`` (default ``vocab_size - 1``, CLIP's end-of-text) is where HF's text model pools; it must be
    the end-of-text id of the tokenizer that goes with the weights. ``bos_token_id`` defaults to the id before."""
    _check_hf_exportable(cfg)
    v, t = cfg.vision, cfg.text
    eos = t.vocab_size - 1 if eos_token_id is None else eos_token_id
    bos = eos - 1 if bos_token_id is None else bos_token_id
    text = {"model_type": "clip_text_model", "vocab_size": t.vocab_size, "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio), "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "max_position_embeddings": t.context_length,
            "hidden_act": _HF_ACTIVATIONS[t.activation], "layer_norm_eps": t.eps, "attention_dropout": 0.0,
            "projection_dim": cfg.embed_dim, "pad_token_id": t.pad_id, "bos_token_id": bos, "eos_token_id": eos}
    vision = {"model_type": "clip_vision_model", "hidden_size": v.width,
              "intermediate_size": int(v.width * v.mlp_ratio), "num_hidden_layers": v.layers,
              "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size,
              "num_channels": 3, "hidden_act": _HF_ACTIVATIONS[v.activation], "layer_norm_eps": v.eps,
              "attention_dropout": v.attn_dropout, "projection_dim": cfg.embed_dim}
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.embed_dim,
            "logit_scale_init_value": cfg.init_logit_scale, "text_config": text, "vision_config": vision}


def import_hf_folder(path: str | Path, *, pad_id: int = 0) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(config, tvp state dict) from a HF ``CLIPModel`` folder (config.json + model.safetensors, or its shards);
    ``pad_id`` as ``config_from_hf``. The tokenizer files are not read here."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()), pad_id=pad_id)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        files = [folder / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        pickled = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if (folder / n).exists()]
        raise FileNotFoundError(f"{folder} has no model.safetensors" + (
            f" (it holds {pickled[0]}; tvp does not unpickle checkpoints: convert it once where you trust the "
            f"file, e.g. CLIPModel.from_pretrained(folder).save_pretrained(folder))" if pickled else ""))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return cfg, weights_from_hf(state, cfg)


def export_hf_folder(path: str | Path, cfg: CLIPConfig, state: dict[str, torch.Tensor], *,
                     eos_token_id: int | None = None) -> Path:
    """Write config.json + model.safetensors that ``transformers.CLIPModel.from_pretrained`` loads (and
    ``import_hf_folder`` reads back); ``eos_token_id`` as ``config_to_hf``. The tokenizer is not written."""
    from safetensors.torch import save_file

    weights = weights_to_hf(state, cfg)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in weights.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = config_to_hf(cfg, eos_token_id=eos_token_id)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
