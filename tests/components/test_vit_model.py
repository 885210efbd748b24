"""tvp's ViT against torchvision's and timm's (built offline from one small random config, weights copied), the
layouts, presets at full size on the meta device, position resampling, the hybrid, and stochastic depth."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from timm.layers import resample_abs_pos_embed  # noqa: E402

from components.models.transformer import Block, DropPath, Encoder, drop_path_rates  # noqa: E402
from components.models.vit import (  # noqa: E402
    VIT_PRESETS,
    ViTConfig,
    VisionTransformer,
    layer_index,
    resample_positions,
    vit_config,
)
from components.models.vit_layouts import (  # noqa: E402
    config_from_timm,
    config_from_torchvision,
    export_timm_folder,
    hybrid_backbone_from_torchvision,
    import_timm_folder,
    timm_data_config,
    timm_model_args,
    torchvision_kwargs,
    weights_from_timm,
    weights_from_torchvision,
    weights_to_timm,
    weights_to_torchvision,
)

SMALL = ViTConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4, eps=1e-6, num_classes=10)


def randomized(model):
    """Every parameter moved off its initial value (torchvision zeroes its head, timm its biases)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def images(batch=3, side=32):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def ours_loaded(weights, cfg=SMALL):
    model = VisionTransformer(cfg).eval()
    model.load_state_dict(weights, strict=True)
    return model


# -- parity with the references ------------------------------------------------------------------------------
def test_logits_equal_torchvision_and_weights_round_trip():
    reference = randomized(torchvision.models.VisionTransformer(**torchvision_kwargs(SMALL)))
    ours = ours_loaded(weights_from_torchvision(reference.state_dict()))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)
    back = weights_to_torchvision(ours.state_dict())
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())


def test_logits_equal_timm_and_weights_round_trip():
    reference = randomized(timm.models.vision_transformer.VisionTransformer(**timm_model_args(SMALL)))
    ours = ours_loaded(weights_from_timm(reference.state_dict()))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.forward_features(x), reference.forward_head(reference.forward_features(x),
                                                                                      pre_logits=True),
                                   atol=1e-5, rtol=0)
    back = weights_to_timm(ours.state_dict())
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())


def test_attentions_are_per_layer_distributions_and_leave_the_logits_alone():
    model = randomized(VisionTransformer(SMALL))
    x = images()
    with torch.no_grad():
        logits, attentions = model(x, output_attentions=True)
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    assert len(attentions) == SMALL.layers
    for a in attentions:
        assert a.shape == (3, SMALL.heads, 1 + 16, 1 + 16)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, SMALL.heads, 17))


def test_timm_folder_loads_in_timm_with_equal_logits_and_reads_back(tmp_path):
    ours = randomized(VisionTransformer(SMALL))
    names = [f"class{i}" for i in range(10)]
    export_timm_folder(SMALL, ours.state_dict(), tmp_path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       label_names=names)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    theirs = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)
    cfg, weights = import_timm_folder(tmp_path)
    assert cfg == SMALL
    assert all(torch.equal(weights[k], v) for k, v in ours.state_dict().items())
    data = timm_data_config(tmp_path)
    assert data["std"] == [0.25] * 3 and data["input_size"] == [3, 32, 32] and data["label_names"] == names


def test_timm_configs_by_name_and_what_tvp_refuses(tmp_path):
    cfg = config_from_timm("vit_base_patch16_384")
    assert (cfg.width, cfg.layers, cfg.heads, cfg.patch_size, cfg.image_size, cfg.num_classes, cfg.eps) == \
        (768, 12, 12, 16, 384, 1000, 1e-6)
    assert config_from_timm("deit_small_patch16_224", {"num_classes": 5, "drop_path_rate": 0.1}) == \
        vit_config("S/16", num_classes=5, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="global_pool='avg'"):
        config_from_timm("vit_base_patch16_224", {"global_pool": "avg"})
    with pytest.raises(ValueError, match="reg_tokens=4"):
        config_from_timm("vit_base_patch16_224", {"reg_tokens": 4})
    with pytest.raises(ValueError, match="eps 1e-6"):
        timm_model_args(ViTConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4))
    with pytest.raises(ValueError, match="no place"):
        weights_from_timm({"reg_token": torch.zeros(1, 4, 64)})
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="does not unpickle"):
        import_timm_folder(tmp_path)


# -- sizes ---------------------------------------------------------------------------------------------------
def test_parameter_counts_equal_timm_and_torchvision_at_full_size_on_meta():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    expected = {"B/16": ("vit_base_patch16_224", "vit_b_16", 86_567_656),
                "L/16": ("vit_large_patch16_224", "vit_l_16", 304_326_632),
                "H/14": ("vit_huge_patch14_224", "vit_h_14", 632_045_800)}
    for preset, (timm_name, tv_name, total) in expected.items():
        with torch.device("meta"):
            ours = VisionTransformer(vit_config(preset, num_classes=1000))
            assert count(ours) == total, preset
            assert count(timm.create_model(timm_name, pretrained=False, num_classes=1000)) == total, timm_name
            assert count(getattr(torchvision.models, tv_name)()) == total, tv_name
        assert config_from_timm(timm_name) == config_from_torchvision(tv_name) == ours.cfg


def test_presets_and_config_checks():
    assert {"Ti/16", "S/16", "B/32", "B/16", "L/16", "L/32", "H/14", "R50+B/16", "tiny"} <= VIT_PRESETS.keys()
    cfg = vit_config("tiny", num_classes=10, layers=6)
    assert (cfg.image_size, cfg.patch_size, cfg.layers, cfg.num_classes, cfg.grid) == (32, 4, 6, 10, 8)
    with pytest.raises(ValueError, match="unknown ViT preset"):
        vit_config("B/17")
    with pytest.raises(ValueError, match="multiple of it"):
        ViTConfig(image_size=32, patch_size=8, width=64, layers=1, heads=4, backbone="resnet50")
    with pytest.raises(ValueError, match="drop_path_rate"):
        ViTConfig(drop_path_rate=1.0)


def test_layer_index_for_layer_wise_decay():
    model = VisionTransformer(SMALL)
    depth = {name: layer_index(name, SMALL.layers) for name, _ in model.named_parameters()}
    assert depth["patch_embed.proj.weight"] == depth["cls_token"] == depth["pos_embed"] == 0
    assert depth["encoder.layers.0.attn.qkv.weight"] == 1 and depth["encoder.layers.1.mlp.fc2.bias"] == 2
    assert depth["ln_post.weight"] == depth["head.bias"] == 3
    assert layer_index("visual.encoder.layers.1.ln_1.weight", 2) == 2 and layer_index("visual.pos_embed", 2) == 0


# -- positions at another resolution -------------------------------------------------------------------------
@pytest.mark.parametrize("new_grid", [(10, 10), (4, 4), (6, 9)])
def test_resampled_positions_equal_timm(new_grid):
    table = torch.randn(1, 1 + 7 * 7, 16, generator=torch.Generator().manual_seed(2))
    expected = resample_abs_pos_embed(table, list(new_grid), num_prefix_tokens=1)
    got = resample_positions(table, new_grid)
    assert got.shape == (1, 1 + new_grid[0] * new_grid[1], 16)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(got[:, :1], table[:, :1])
    assert resample_positions(table, 7) is table


def test_a_model_takes_a_new_resolution_through_resampled_positions():
    model = randomized(VisionTransformer(SMALL))
    bigger = ViTConfig(**{**SMALL.__dict__, "image_size": 48})
    weights = model.state_dict()
    weights["pos_embed"] = resample_positions(weights["pos_embed"], bigger.grid)
    assert ours_loaded(weights, bigger)(images(2, 48)).shape == (2, 10)
    with pytest.raises(ValueError, match="resample_positions"):
        model(images(2, 48))


# -- the hybrid ----------------------------------------------------------------------------------------------
def test_hybrid_reads_resnet50_stage_3_and_learns():
    with torch.device("meta"):  # names and shapes, nothing allocated
        resnet = torchvision.models.resnet50()
        wide = VisionTransformer(vit_config("R50+B/16", image_size=64, patch_size=32, width=32, layers=1, heads=2))
        assert wide(torch.empty(1, 3, 64, 64)).shape == (1, 32)  # (64/32)² tokens from 2×2 cells of the map
    assert wide.patch_embed.proj.weight.shape == (32, 1024, 2, 2)
    backbone = hybrid_backbone_from_torchvision(resnet.state_dict())
    assert backbone.keys() == {k for k in wide.state_dict() if k.startswith("patch_embed.backbone.")}

    torch.manual_seed(0)
    model = VisionTransformer(vit_config("R50+B/16", image_size=32, width=32, layers=1, heads=2, num_classes=3))
    assert model.patch_embed.proj.weight.shape == (32, 1024, 1, 1) and model.pos_embed.shape == (1, 1 + 4, 32)
    x, labels = images(4), torch.tensor([0, 1, 2, 0])
    assert model.patch_embed.backbone(x).shape == (4, 1024, 2, 2)
    with pytest.raises(ValueError, match="hybrid"):
        weights_to_timm(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0] and losses == sorted(losses, reverse=True), losses


# -- CLIP's tower and stochastic depth -----------------------------------------------------------------------
def test_the_tower_without_a_head_keeps_clips_names_and_outputs():
    cfg = ViTConfig(image_size=16, patch_size=8, width=32, layers=2, heads=2)
    torch.manual_seed(0)
    tower = VisionTransformer(cfg).eval()
    names = {k.split(".encoder.layers.")[0] if ".layers." in k else k for k in tower.state_dict()}
    assert names == {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed",
                     "ln_post.weight", "ln_post.bias"} | {k for k in tower.state_dict() if k.startswith("encoder.")}
    assert not any(k.startswith("head") for k in tower.state_dict()) and tower.ln_post.eps == 1e-5
    x = images(2, 16)
    with torch.no_grad():
        tokens = torch.cat([tower.cls_token.expand(2, -1, -1), tower.patch_embed(x)], 1) + tower.pos_embed
        expected = tower.ln_post(tower.encoder(tokens))[:, 0]
        torch.testing.assert_close(tower(x), expected)


def test_drop_path_is_the_identity_in_eval_and_drops_whole_samples_in_training():
    torch.manual_seed(0)
    plain, dropping = Block(16, 2), Block(16, 2, drop_path=0.5)
    assert isinstance(plain.drop_path, torch.nn.Identity) and plain.state_dict().keys() == dropping.state_dict().keys()
    dropping.load_state_dict(plain.state_dict())
    x = torch.randn(4, 5, 16)
    torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))
    branch = DropPath(0.25).train()(torch.ones(4000, 3, 2))
    per_sample = branch.reshape(4000, -1)
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (per_sample == per_sample[:, :1]).all()  # a sample's branch is dropped or kept whole
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    rates = [layer.drop_path.p if isinstance(layer.drop_path, DropPath) else 0.0
             for layer in Encoder(16, 5, 2, drop_path_rate=0.2).layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2]) == drop_path_rates(0.2, 5)
