"""tvp's DETR against transformers' (a small random config on a timm ResNet-18 and on HF's own ResNet-18, weights
copied), the HF folder layout both ways, padding masks, auxiliary outputs, attention maps and frozen layers."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")  # HF's default (and the released checkpoints') backbone layout

from components.models.detr import DETR, DETR_PRESETS, DetrConfig, detr_config  # noqa: E402
from components.models.detr_hf import (  # noqa: E402
    detr_config_from_hf,
    export_hf_folder,
    import_hf_folder,
    weights_from_hf,
    weights_to_hf,
)
from components.models.position_encoding import PositionEmbeddingSine  # noqa: E402

SMALL = dict(backbone="resnet18", use_pretrained_backbone=False, d_model=32, encoder_layers=2, decoder_layers=3,
             encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4,
             num_queries=6, num_labels=5, dropout=0.0, attention_dropout=0.0)
HF_RESNET18 = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], out_features=["stage4"])


def hf_model(timm_backbone: bool = True):
    """A random HF DETR whose every tensor, frozen BatchNorm statistics included, is off its initial value."""
    torch.manual_seed(0)
    if timm_backbone:
        config = transformers.DetrConfig(use_timm_backbone=True, **SMALL)
    else:
        config = transformers.DetrConfig(use_timm_backbone=False, **{**SMALL, "backbone": None},
                                         backbone_config=transformers.ResNetConfig(**HF_RESNET18))
    model = transformers.DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "backbone" not in name:
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")):
                b.normal_(0, 0.1)
            elif name.endswith("weight"):
                b.uniform_(0.5, 1.0)
    return model


def ours_from(hf, **overrides):
    cfg = detr_config_from_hf(hf.config.to_dict(), **overrides)
    model = DETR(cfg).eval()
    model.load_state_dict(weights_from_hf(hf.state_dict(), cfg), strict=True)
    return model


def batch():
    """Two images, the second 32×64 inside a 64×96 padded batch (feature cells 1×2 of 2×3): (images, tvp mask,
    HF pixel_mask)."""
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(2, 64, 96, dtype=torch.bool)
    padding[1, 32:] = True
    padding[1, :, 64:] = True
    images[padding[:, None].expand_as(images)] = 0.0
    return images, padding, (~padding).long()


def hf_outputs(hf, images, pixel_mask):
    """HF's logits, boxes and the auxiliary pairs DETR computes (each earlier layer's output after the final norm;
    transformers 5.24's own auxiliary_loss path feeds normalised states forward, which DETR does not)."""
    out = hf(pixel_values=images, pixel_mask=pixel_mask, output_hidden_states=True)
    aux = []
    for hidden in out.decoder_hidden_states[1:-1]:  # [0] is the decoder's input
        hidden = hf.model.decoder.layernorm(hidden)
        aux.append({"logits": hf.class_labels_classifier(hidden), "boxes": hf.bbox_predictor(hidden).sigmoid()})
    return {"logits": out.logits, "boxes": out.pred_boxes, "aux": aux}


def assert_outputs_close(got, expected, atol=1e-5):
    assert len(got["aux"]) == len(expected["aux"])
    for mine, theirs in zip([got, *got["aux"]], [expected, *expected["aux"]]):
        torch.testing.assert_close(mine["logits"], theirs["logits"], atol=atol, rtol=0)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=atol, rtol=0)


def scalar(outputs, seed=2):
    """A fixed random linear function of every output, so every gradient path is exercised."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for pair in [outputs, *outputs["aux"]]:
        for key in ("logits", "boxes"):
            total = total + (pair[key] * torch.randn(pair[key].shape, generator=g)).sum()
    return total


# -- parity with transformers --------------------------------------------------------------------------------
def test_outputs_and_gradients_equal_transformers_with_padding():
    hf = hf_model()
    ours = ours_from(hf)
    images, padding, pixel_mask = batch()
    with torch.no_grad():
        expected = hf_outputs(hf, images, pixel_mask)
        got = ours(images, padding)
    assert got["logits"].shape == (2, 6, 6) and got["boxes"].shape == (2, 6, 4) and len(got["aux"]) == 2
    assert_outputs_close(got, expected)

    # gradients in train mode, with DETR's frozen stem and first stage on both sides (transformers 5.24 freezes
    # nothing of a timm backbone, so the test freezes HF's by hand)
    for name, p in hf.model.backbone.named_parameters():
        p.requires_grad_(any(f"layer{i}." in name for i in (2, 3, 4)))
    hf.train(), ours.train()
    scalar(hf_outputs(hf, images, pixel_mask)).backward()
    scalar(ours(images, padding)).backward()
    frozen = [p for n, p in ours.named_parameters() if n.startswith(("backbone.conv1", "backbone.layer1"))]
    assert frozen and all(p.grad is None for p in frozen)
    ours_grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in ours.named_parameters()}
    mapped = weights_to_hf({**ours.state_dict(), **ours_grads}, ours.cfg)
    hf_params = {n.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
                 .replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc"): p for n, p in hf.named_parameters()}
    assert len(hf_params) == len(ours_grads) + 4 * ours.cfg.encoder_layers + 8 * ours.cfg.decoder_layers  # q/k/v
    for name, p in hf_params.items():  # max |difference| (assert_close's element-wise check takes seconds here)
        expected_grad = p.grad if p.grad is not None else torch.zeros_like(p)
        difference = (mapped[name] - expected_grad).abs().max().item()
        assert difference <= 1e-5 + 1e-6 * expected_grad.abs().max().item(), f"{name}: {difference}"


def test_hf_resnet_backbone_layout_imports_and_exports(tmp_path):
    hf = hf_model(timm_backbone=False)
    ours = ours_from(hf)
    assert ours.cfg.backbone == "resnet18"
    images, padding, pixel_mask = batch()
    with torch.no_grad():
        expected = hf_outputs(hf, images, pixel_mask)
        assert_outputs_close(ours(images, padding), expected)
    export_hf_folder(tmp_path, ours.cfg, ours.state_dict(), backbone_layout="hf")
    back, info = transformers.DetrForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert back.config.backbone_config.model_type == "resnet"
    with torch.no_grad():
        assert_outputs_close(hf_outputs(back.eval(), images, pixel_mask), expected, atol=1e-6)


def test_hf_folder_round_trip_both_ways(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "theirs")  # what transformers writes (its version-4 names)
    cfg, state = import_hf_folder(tmp_path / "theirs")
    ours = DETR(cfg).eval()
    ours.load_state_dict(state, strict=True)
    images, padding, pixel_mask = batch()
    with torch.no_grad():
        expected = hf_outputs(hf, images, pixel_mask)
        assert_outputs_close(ours(images, padding), expected)

    names = {0: "cat", 3: "dog"}
    export_hf_folder(tmp_path / "ours", cfg, ours.state_dict(), id2label=names)
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["auxiliary_loss"] is False and config["backbone"] == "resnet18" and config["id2label"]["3"] == "dog"
    back, info = transformers.DetrForObjectDetection.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and back.config.num_labels == 5
    with torch.no_grad():
        assert_outputs_close(hf_outputs(back.eval(), images, pixel_mask), expected, atol=1e-6)
    cfg2, state2 = import_hf_folder(tmp_path / "ours", aux_loss=False)
    assert cfg2 == DetrConfig(**{**cfg.__dict__, "aux_loss": False})
    assert state2.keys() == ours.state_dict().keys()
    assert all(torch.equal(state2[k], v) for k, v in ours.state_dict().items())
    # HF's in-memory names (transformers 5) read too
    assert all(torch.equal(v, state[k]) for k, v in weights_from_hf(hf.state_dict(), cfg).items())


def test_unsupported_hf_settings_and_exports_are_refused(tmp_path):
    base = hf_model().config.to_dict()
    with pytest.raises(ValueError, match="position_embedding_type"):
        detr_config_from_hf({**base, "position_embedding_type": "learned"})
    with pytest.raises(ValueError, match="decoder_ffn_dim"):
        detr_config_from_hf({**base, "decoder_ffn_dim": 32})
    with pytest.raises(ValueError, match="tiny backbone"):
        export_hf_folder(tmp_path, detr_config("tiny"), {})
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps(base))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="does not unpickle"):
        import_hf_folder(tmp_path / "pickled")


def test_parameter_count_equals_transformers_at_r50():
    with torch.device("meta"):
        hf = transformers.DetrForObjectDetection(transformers.DetrConfig(use_pretrained_backbone=False))
        ours = DETR(detr_config("r50", num_classes=hf.config.num_labels))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())  # 41.5M


# -- masks, auxiliary outputs, attention maps ----------------------------------------------------------------
def test_padding_changes_nothing_for_the_real_cells():
    """The Transformer and the heads see a padded feature map exactly as the unpadded one alone."""
    torch.manual_seed(0)
    model = DETR(detr_config("tiny", num_classes=3)).eval()
    features = torch.randn(1, 64, 3, 4)
    padded = torch.cat([torch.cat([features, torch.randn(1, 64, 3, 2)], dim=3), torch.randn(1, 64, 2, 6)], dim=2)
    mask = torch.ones(1, 5, 6, dtype=torch.bool)
    mask[:, :3, :4] = False
    with torch.no_grad():
        alone = model.forward_features(features, torch.zeros(1, 3, 4, dtype=torch.bool))
        inside = model.forward_features(padded, mask)
    assert_outputs_close(inside, alone)
    position = PositionEmbeddingSine(32)
    torch.testing.assert_close(position(mask)[..., :3, :4], position(torch.zeros(1, 3, 4, dtype=torch.bool)))


def test_aux_outputs_and_attention_maps():
    torch.manual_seed(0)
    model = DETR(detr_config("tiny", num_classes=3, decoder_layers=3)).eval()
    images = torch.randn(2, 3, 64, 80)
    mask = torch.zeros(2, 64, 80, dtype=torch.bool)
    mask[1, :, 48:] = True  # the second image is 64×48: feature cells 4×3 of 4×5
    with torch.no_grad():
        out = model(images, mask, output_attentions=True)
        plain = model(images, mask)
        model.cfg.aux_loss = False
        last_only = model(images, mask)
    assert len(out["aux"]) == 2 and last_only["aux"] == []
    for key in ("logits", "boxes"):
        torch.testing.assert_close(out[key], plain[key])
        torch.testing.assert_close(last_only[key], plain[key])
    assert out["boxes"].min() >= 0 and out["boxes"].max() <= 1
    cross = out["cross_attentions"]
    assert len(cross) == 3 and cross[-1].shape == (2, 4, 16, 4, 5)
    torch.testing.assert_close(cross[-1].sum(dim=(-2, -1)), torch.ones(2, 4, 16))
    assert cross[-1][1, ..., 3:].abs().max() == 0  # padded cells get no attention
    assert out["feature_mask"][1, :, 3:].all() and not out["feature_mask"][1, :, :3].any()
    assert out["encoder_attentions"][0].shape == (2, 4, 20, 20) and out["decoder_attentions"][0].shape == (2, 4, 16, 16)


# -- presets and freezing ------------------------------------------------------------------------------------
def test_frozen_layers_and_presets():
    with torch.device("meta"):
        r50 = DETR(detr_config("r50"))
        frozen = {n.split(".")[1] for n, p in r50.named_parameters() if not p.requires_grad}
        assert frozen == {"conv1", "layer1"}  # DETR trains layer2-4 of the backbone, and everything after it
        assert not any("bn" in n or "downsample.1" in n for n, _ in r50.named_parameters())  # frozen BatchNorm
        all_frozen = DETR(detr_config("r50", trainable_backbone_layers=0))
        assert not any(p.requires_grad for p in all_frozen.backbone.parameters())
        assert all(p.requires_grad for n, p in all_frozen.named_parameters() if not n.startswith("backbone."))
        dc5 = DETR(detr_config("r50-dc5"))
        assert dc5.backbone.stride == 16 and r50.backbone.stride == 32
        for preset in DETR_PRESETS:
            DETR(detr_config(preset))
    tiny = DETR(detr_config("tiny"))
    assert all(p.requires_grad for p in tiny.parameters())
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000
    with pytest.raises(ValueError, match="trainable_backbone_layers"):
        detr_config("tiny", trainable_backbone_layers=5)
    with pytest.raises(ValueError, match="dilation"):
        detr_config("tiny", dilation=True)
    pydantic = pytest.importorskip("pydantic")
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        pydantic.TypeAdapter(DetrConfig).validate_python({"bogus": 1})
