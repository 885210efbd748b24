"""tvp's CLIP against open_clip's ``CLIP`` and transformers' ``CLIPModel`` (built offline from small random
configs, weights copied): features, logit scale, both layouts both ways, hub folders each library loads, presets
at full size on the meta device, and the options that keep old configs computing what they did."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from open_clip.model import CLIP as OpenClipCLIP  # noqa: E402

from components.models.clip import CLIP, CLIP_PRESETS, CLIPConfig, TextConfig, clip_config  # noqa: E402
from components.models.clip_layouts import (  # noqa: E402
    config_from_hf,
    config_from_open_clip,
    config_to_hf,
    config_to_open_clip,
    export_hf_folder,
    export_open_clip_folder,
    import_hf_folder,
    import_open_clip_folder,
    weights_from_hf,
    weights_from_open_clip,
    weights_to_hf,
    weights_to_open_clip,
)
from components.models.vit import ViTConfig, layer_index  # noqa: E402

# "!" is id 0 of OpenAI's vocabulary, the pad id too: a caption with one still pools at its end-of-text token.
CAPTIONS = ["a cat", "two dogs !~ on a sofa !~", "an extremely long caption that fills every one of the "
            "sixteen places and more"]
SMALL = clip_config("micro", vision=dict(layers=2), text=dict(layers=2, vocab_size=49408, context_length=16))


def tokens():
    """open_clip's tokenisation (start, BPE ids, end-of-text 49407, zeros; the long one cut to end in 49407)."""
    out = open_clip.tokenize(CAPTIONS, context_length=16)
    assert out[2, -1] == 49407 and (out[0] == 0).any()  # one full row, one padded
    assert (out[1, 1:out[1].argmax()] == 0).sum() == 2  # two "!" (id 0: "!~" splits) before the end-of-text token
    return out


def images(batch=3, side=16):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def randomized(model):
    """Every parameter moved off its initial value (LayerNorms and biases start at constants)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def ours_loaded(cfg, weights):
    model = CLIP(cfg).eval()
    model.load_state_dict(weights, strict=True)
    return model


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key].reshape(a[key].shape)), key


def assert_close_outputs(ours, theirs):
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


# -- equality with the reference implementations -------------------------------------------------------------
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_features_and_logit_scale_equal_open_clip_and_weights_round_trip(activation):
    cfg = clip_config("micro", activation=activation, vision=dict(layers=2),
                      text=dict(layers=2, vocab_size=49408, context_length=16))
    theirs = randomized(OpenClipCLIP(**config_to_open_clip(cfg)))
    assert config_from_open_clip(config_to_open_clip(cfg)) == cfg
    ours = ours_loaded(cfg, weights_from_open_clip(theirs.state_dict(), cfg))
    with torch.no_grad():
        assert_close_outputs(ours(images(), tokens()), theirs(images(), tokens()))
    assert_same_state(weights_to_open_clip(ours.state_dict(), cfg), theirs.state_dict())


def test_features_and_logit_scale_equal_transformers_and_weights_round_trip():
    hf_config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=49407, bos_token_id=49406),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                           image_size=16, patch_size=4),
        projection_dim=24)
    theirs = randomized(transformers.CLIPModel(hf_config))
    cfg = config_from_hf(hf_config.to_dict())
    assert (cfg.vision.width, cfg.vision.mlp_ratio, cfg.text.mlp_ratio, cfg.text.activation) == (48, 2.0, 2.0,
                                                                                                  "quick_gelu")
    ours = ours_loaded(cfg, weights_from_hf(theirs.state_dict(), cfg))
    with torch.no_grad():
        out = theirs(input_ids=tokens(), pixel_values=images())
        assert_close_outputs(ours(images(), tokens()), (out.image_embeds, out.text_embeds, theirs.logit_scale.exp()))
    assert_same_state(weights_to_hf(ours.state_dict(), cfg), theirs.state_dict())


def test_folders_load_in_open_clip_and_transformers_and_read_back(tmp_path):
    torch.manual_seed(2)
    ours = randomized(CLIP(SMALL))
    with torch.no_grad():
        expected = ours(images(), tokens())

    folder = export_open_clip_folder(tmp_path / "open_clip", SMALL, ours.state_dict())
    theirs = open_clip.create_model(f"local-dir:{folder}").eval()
    with torch.no_grad():
        assert_close_outputs(expected, theirs(images(), tokens()))
    cfg, weights, preprocess = import_open_clip_folder(folder)
    assert cfg == SMALL and preprocess["interpolation"] == "bicubic"
    assert_same_state(weights, ours.state_dict())

    folder = export_hf_folder(tmp_path / "hf", SMALL, ours.state_dict())
    theirs = transformers.CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = theirs(input_ids=tokens(), pixel_values=images())
        assert_close_outputs(expected, (out.image_embeds, out.text_embeds, theirs.logit_scale.exp()))
    cfg, weights = import_hf_folder(folder)
    assert cfg == SMALL
    assert_same_state(weights, ours.state_dict())


def test_a_model_of_the_old_options_exports_to_open_clip_with_its_patch_bias_folded():
    """Configs from before ln_pre/patch_bias (GELU, patch bias, no ln_pre) leave open_clip's function unchanged."""
    cfg = CLIPConfig(embed_dim=16, vision=ViTConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                     text=TextConfig(vocab_size=49408, context_length=16, width=32, layers=1, heads=2))
    ours = randomized(CLIP(cfg))
    model_cfg = config_to_open_clip(cfg)
    assert model_cfg["vision_cfg"]["no_ln_pre"] and "quick_gelu" not in model_cfg
    theirs = OpenClipCLIP(**model_cfg).eval()
    theirs.load_state_dict(weights_to_open_clip(ours.state_dict(), cfg))
    with torch.no_grad():
        assert_close_outputs(ours(images(), tokens()), theirs(images(), tokens()))
    with pytest.raises(ValueError, match="ln_pre=True"):
        weights_to_hf(ours.state_dict(), cfg)


# -- sizes and presets ---------------------------------------------------------------------------------------
def test_parameter_counts_equal_open_clip_and_transformers_at_full_size_on_meta():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    expected = {"ViT-B/32": ("ViT-B-32-quickgelu", 151_277_313), "ViT-B/16": ("ViT-B-16-quickgelu", 149_620_737),
                "ViT-L/14": ("ViT-L-14-quickgelu", 427_616_513)}
    for preset, (open_clip_name, total) in expected.items():
        model_cfg = open_clip.get_model_config(open_clip_name)
        cfg = clip_config(preset)
        assert config_from_open_clip(model_cfg) == cfg, preset
        with torch.device("meta"):
            assert count(CLIP(cfg)) == total, preset
            assert count(OpenClipCLIP(**model_cfg)) == total, open_clip_name
            assert count(transformers.CLIPModel(transformers.CLIPConfig.from_dict(config_to_hf(cfg)))) == total
    # open_clip's GELU models (LAION, DataComp) are the same sizes with GELU
    assert config_from_open_clip(open_clip.get_model_config("ViT-B-32")) == clip_config("ViT-B/32", activation="gelu")


def test_presets_and_the_defaults_that_old_configs_keep():
    assert {"ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px", "tiny", "micro"} <= CLIP_PRESETS.keys()
    for name in CLIP_PRESETS:
        cfg = clip_config(name)
        assert (cfg.vision.ln_pre, cfg.vision.patch_bias, cfg.vision.activation, cfg.text.activation) == (
            True, False, "quick_gelu", "quick_gelu"), name
    cfg = clip_config("ViT-B/16", embed_dim=256, vision=dict(image_size=384), text=dict(pad_id=3))
    assert (cfg.embed_dim, cfg.vision.image_size, cfg.vision.patch_size, cfg.text.pad_id, cfg.text.width) == (
        256, 384, 16, 3, 512)
    with pytest.raises(ValueError, match="unknown CLIP preset"):
        clip_config("ViT-B/8")
    with pytest.raises(ValueError, match="unknown activation"):
        TextConfig(activation="swish")

    old = CLIP(CLIPConfig(embed_dim=8, vision=ViTConfig(image_size=16, patch_size=8, width=8, layers=1, heads=2),
                          text=TextConfig(vocab_size=20, context_length=8, width=8, layers=1, heads=2)))
    names = old.state_dict().keys()
    assert "visual.patch_embed.proj.bias" in names and not any(".ln_pre." in k for k in names)
    assert old.text.encoder.layers[0].mlp.activation_name == "gelu"
    assert layer_index("visual.ln_pre.weight", 12) == 0


def test_what_the_layouts_refuse():
    model_cfg = config_to_open_clip(SMALL)
    for part, key, value, match in [("vision_cfg", "ls_init_value", 1e-5, "ls_init_value"),
                                    ("vision_cfg", "timm_model_name", "vit_base_patch16_224", "timm_model_name"),
                                    ("vision_cfg", "layers", [3, 4, 6, 3], "ModifiedResNet"),
                                    ("text_cfg", "hf_model_name", "roberta-base", "hf_model_name"),
                                    ("text_cfg", "pool_type", "last", "pool_type"),
                                    ("text_cfg", "proj_bias", True, "proj_bias")]:
        with pytest.raises(ValueError, match=match):
            config_from_open_clip({**model_cfg, part: {**model_cfg[part], key: value}})
    with pytest.raises(ValueError, match="init_logit_bias"):
        config_from_open_clip({**model_cfg, "init_logit_bias": -10.0})
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf({"model_type": "siglip"})

    weights = weights_to_open_clip(CLIP(SMALL).state_dict(), SMALL)
    with pytest.raises(ValueError, match="no place"):
        weights_from_open_clip({**weights, "visual.extra": torch.zeros(1)}, SMALL)
    with pytest.raises(ValueError, match="lacks"):
        weights_from_open_clip(weights, clip_config("micro", vision=dict(layers=3)))
