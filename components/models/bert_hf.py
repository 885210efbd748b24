"""BERT weights and configs to and from the Hugging Face layout: model.safetensors + config.json + vocab.txt.

Users start from released checkpoints (``bert-base-uncased`` and the like, as
a folder on disk) and take their own weights back out in the same form, which
``transformers.BertForPreTraining.from_pretrained`` loads. Only torch,
safetensors and json are used; ``transformers`` is never imported.

Name mapping (HF → tvp, per layer ``i``; ``bert.`` prefixes on both sides):
- ``embeddings.{word,position,token_type}_embeddings`` → ``embeddings.{word,pos,type}_embed``;
  ``embeddings.LayerNorm`` → ``embeddings.ln``
- ``encoder.layer.i.attention.self.{query,key,value}`` → ``encoder.layers.i.attn.qkv`` (stacked q, k, v)
- ``...attention.output.dense`` → ``attn.proj``; ``...attention.output.LayerNorm`` → ``ln_1``
- ``...intermediate.dense`` → ``mlp.fc1``; ``...output.dense`` → ``mlp.fc2``; ``...output.LayerNorm`` → ``ln_2``
- ``pooler.dense`` → ``pooler``
- ``cls.predictions.transform.{dense,LayerNorm}`` → ``mlm.{dense,ln}``; ``cls.predictions.bias`` → ``mlm.bias``
  (the decoder weight is the word embeddings' in both layouts)
- ``cls.seq_relationship`` → ``nsp``; ``classifier`` → ``classifier``

Pickled checkpoints (``pytorch_model.bin``) are refused: loading one runs code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from components.models.bert import BertConfig, BertForPreTraining

# HF config keys whose values tvp's BERT cannot reproduce: key -> the values it can.
_SUPPORTED_VALUES = {
    "model_type": ("bert",),
    "position_embedding_type": ("absolute",),
    "hidden_act": ("gelu",),
    "is_decoder": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}

# tvp field <- HF key, with HF's default when a (older) config.json leaves the key out.
_CONFIG_FIELDS = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("hidden_size", 768),
    "layers": ("num_hidden_layers", 12),
    "heads": ("num_attention_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "max_position": ("max_position_embeddings", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "dropout": ("hidden_dropout_prob", 0.1),
    "attn_dropout": ("attention_probs_dropout_prob", 0.1),
    "eps": ("layer_norm_eps", 1e-12),
    "pad_id": ("pad_token_id", 0),
    "initializer_range": ("initializer_range", 0.02),
}


def bert_config_from_hf(config_json: dict) -> BertConfig:
    """A ``BertConfig`` from a HF ``config.json`` dict; a setting tvp cannot run is a ValueError naming its key."""
    for key, allowed in _SUPPORTED_VALUES.items():
        if key in config_json and config_json[key] not in allowed:
            raise ValueError(f"config.json: {key}={config_json[key]!r} is not supported by tvp's BERT "
                             f"(supported: {', '.join(map(repr, allowed))})")
    values = {field: config_json.get(key, default) for field, (key, default) in _CONFIG_FIELDS.items()}
    if values["pad_id"] is None:
        values["pad_id"] = 0
    return BertConfig(**values)


def bert_config_to_hf(cfg: BertConfig, architecture: str = "BertForPreTraining", **extra) -> dict:
    """A HF ``config.json`` dict that ``transformers.BertConfig`` and ``from_pretrained`` read."""
    out = {"architectures": [architecture], "model_type": "bert"}
    out.update({key: getattr(cfg, field) for field, (key, _) in _CONFIG_FIELDS.items()})
    out.update({"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                "add_cross_attention": False, "tie_word_embeddings": True, "classifier_dropout": None})
    out.update(extra)
    return out


def _renames(cfg: BertConfig) -> dict[str, str]:
    """tvp module path -> HF module path for every plain (non-fused) module; parameters are ``.weight``/``.bias``."""
    names = {
        "bert.embeddings.word_embed": "bert.embeddings.word_embeddings",
        "bert.embeddings.pos_embed": "bert.embeddings.position_embeddings",
        "bert.embeddings.type_embed": "bert.embeddings.token_type_embeddings",
        "bert.embeddings.ln": "bert.embeddings.LayerNorm",
        "bert.pooler": "bert.pooler.dense",
        "mlm.dense": "cls.predictions.transform.dense",
        "mlm.ln": "cls.predictions.transform.LayerNorm",
        "nsp": "cls.seq_relationship",
        "classifier": "classifier",
    }
    for i in range(cfg.layers):
        ours, theirs = f"bert.encoder.layers.{i}", f"bert.encoder.layer.{i}"
        names[f"{ours}.attn.proj"] = f"{theirs}.attention.output.dense"
        names[f"{ours}.ln_1"] = f"{theirs}.attention.output.LayerNorm"
        names[f"{ours}.mlp.fc1"] = f"{theirs}.intermediate.dense"
        names[f"{ours}.mlp.fc2"] = f"{theirs}.output.dense"
        names[f"{ours}.ln_2"] = f"{theirs}.output.LayerNorm"
    return names


def _canonical_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Today's HF names: ``bert.`` prefix on bare BertModel keys, ``LayerNorm.gamma/beta`` → ``weight/bias``."""
    out = {}
    for key, value in state.items():
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        if key.endswith("LayerNorm.gamma"):
            key = key.removesuffix("gamma") + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key.removesuffix("beta") + "bias"
        out[key] = value
    return out


def _expected_shapes(cfg: BertConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in BertForPreTraining(cfg).state_dict().items()}


def _head_report(ours: dict[str, torch.Tensor]) -> list[str]:
    """The parts a checkpoint lacks; a classification checkpoint is not expected to carry the pretraining heads."""
    parts = {"pooler (bert.pooler.dense)": "bert.pooler.weight"}
    if "classifier.weight" not in ours:
        parts["MLM head (cls.predictions.*)"] = "mlm.dense.weight"
        parts["NSP head (cls.seq_relationship.*)"] = "nsp.weight"
    return [name for name, key in parts.items() if key not in ours]


def weights_from_hf(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """tvp state dict (``bert.*``, and ``mlm.*``, ``nsp.*``, ``classifier.*`` where present) from a HF one.

    Accepts BertForPreTraining, BertForMaskedLM, BertForSequenceClassification
    and bare BertModel checkpoints, with today's or TF-era (``gamma``/``beta``)
    names. Every embedding and encoder tensor must be present (a KeyError names
    the first missing one); a missing pooler or head is a warning naming it, and
    those keys are absent from the result, so ``load_state_dict(strict=False)``
    leaves them at their initial values. A key tvp has no place for, or a shape
    that disagrees with ``cfg``, is a ValueError naming it.
    """
    hf = _canonical_hf(state)
    hf.pop("bert.embeddings.position_ids", None)  # a buffer older versions saved
    decoder_weight = hf.pop("cls.predictions.decoder.weight", None)
    decoder_bias = hf.pop("cls.predictions.decoder.bias", None)
    if "cls.predictions.bias" not in hf and decoder_bias is not None and "cls.predictions.transform.dense.weight" in hf:
        hf["cls.predictions.bias"] = decoder_bias
    word = hf.get("bert.embeddings.word_embeddings.weight")
    if decoder_weight is not None and word is not None and not torch.equal(decoder_weight, word):
        raise ValueError("cls.predictions.decoder.weight differs from the word embeddings: tvp's BERT ties them")
    ours: dict[str, torch.Tensor] = {}
    for our_module, hf_module in _renames(cfg).items():
        for param in ("weight", "bias"):
            if f"{hf_module}.{param}" in hf:
                ours[f"{our_module}.{param}"] = hf.pop(f"{hf_module}.{param}")
    if "cls.predictions.bias" in hf:
        ours["mlm.bias"] = hf.pop("cls.predictions.bias")
    for i in range(cfg.layers):
        prefix = f"bert.encoder.layer.{i}.attention.self"
        for param in ("weight", "bias"):
            names = [f"{prefix}.{part}.{param}" for part in ("query", "key", "value")]
            if all(name in hf for name in names):
                ours[f"bert.encoder.layers.{i}.attn.qkv.{param}"] = torch.cat([hf.pop(name) for name in names])
    if hf:
        raise ValueError(f"HF checkpoint has {len(hf)} key(s) tvp's BERT has no place for, e.g. {sorted(hf)[:3]} "
                         f"(is the config's num_hidden_layers={cfg.layers} right?)")
    _check_shapes(ours, cfg)
    missing = _head_report(ours)
    if missing:
        warnings.warn(f"HF checkpoint has no {', no '.join(missing)}: those weights keep their initialisation",
                      stacklevel=2)
    return ours


def _check_shapes(ours: dict[str, torch.Tensor], cfg: BertConfig) -> None:
    expected = _expected_shapes(cfg)
    for key, value in ours.items():
        if key.startswith("classifier."):
            continue  # its width is the task's number of labels
        if expected[key] != value.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not match the config's {tuple(expected[key])}")
    required = [k for k in expected if k.startswith(("bert.embeddings.", "bert.encoder."))]
    for key in required:
        if key not in ours:
            raise KeyError(f"HF checkpoint lacks the tensor for {key}")


def weights_to_hf(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """HF state dict (``bert.*``, ``cls.*``, ``classifier.*``) from a tvp BertForPreTraining,
    BertForSequenceClassification or BertModel state dict. Tied copies (the decoder weight) are left out, as
    ``save_pretrained`` does; every tensor is contiguous and owns its storage, as safetensors requires."""
    ours = {("bert." + k if k.startswith(("embeddings.", "encoder.", "pooler.")) else k): v for k, v in state.items()}
    hf: dict[str, torch.Tensor] = {}
    for our_module, hf_module in _renames(cfg).items():
        for param in ("weight", "bias"):
            if f"{our_module}.{param}" in ours:
                hf[f"{hf_module}.{param}"] = ours.pop(f"{our_module}.{param}").detach().clone().contiguous()
    if "mlm.bias" in ours:
        hf["cls.predictions.bias"] = ours.pop("mlm.bias").detach().clone()
    for i in range(cfg.layers):
        for param in ("weight", "bias"):
            key = f"bert.encoder.layers.{i}.attn.qkv.{param}"
            if key in ours:
                q, k, v = ours.pop(key).detach().chunk(3, dim=0)
                prefix = f"bert.encoder.layer.{i}.attention.self"
                hf[f"{prefix}.query.{param}"], hf[f"{prefix}.key.{param}"], hf[f"{prefix}.value.{param}"] = (
                    t.clone().contiguous() for t in (q, k, v))
    if ours:
        raise ValueError(f"state dict has {len(ours)} key(s) with no place in the HF layout, e.g. {sorted(ours)[:3]}")
    return hf


def import_hf_folder(path: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor], str | None]:
    """(config, tvp state dict, vocab.txt text or None when the folder has none) from a HF model folder."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    cfg = bert_config_from_hf(json.loads((folder / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        state.update(load_file(file))
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8") if (folder / "vocab.txt").is_file() else None
    tokens = 0 if vocab is None else len(vocab.rstrip("\n").split("\n"))  # one a line; only "\n" ends a line
    if tokens > cfg.vocab_size:
        raise ValueError(f"vocab.txt has {tokens} tokens, more than the config's vocab_size {cfg.vocab_size}")
    return cfg, weights_from_hf(state, cfg), vocab


def _weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    pickled = [name for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if (folder / name).exists()]
    if pickled:
        raise ValueError(f"{folder} holds {pickled[0]} but no model.safetensors; tvp does not unpickle checkpoints. "
                         "Convert it once where you trust the file, e.g. transformers' "
                         "BertForPreTraining.from_pretrained(folder).save_pretrained(folder) (it writes safetensors)")
    raise FileNotFoundError(f"{folder} has no model.safetensors")


def export_hf_folder(path: str | Path, cfg: BertConfig, state: dict[str, torch.Tensor],
                     vocab_txt: str | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``vocab.txt``) that transformers' ``from_pretrained`` loads.

    The architecture follows the state: a classifier makes it BertForSequenceClassification
    (``num_labels`` from its width), an MLM head BertForPreTraining, otherwise BertModel."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    hf = weights_to_hf(state, cfg)
    if "classifier.weight" in hf:
        config = bert_config_to_hf(cfg, "BertForSequenceClassification", num_labels=hf["classifier.weight"].shape[0])
    else:
        config = bert_config_to_hf(cfg, "BertForPreTraining" if "cls.predictions.bias" in hf else "BertModel")
    save_file({k: v.cpu() for k, v in hf.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if vocab_txt is not None:
        (folder / "vocab.txt").write_text(vocab_txt, encoding="utf-8")
    return folder
