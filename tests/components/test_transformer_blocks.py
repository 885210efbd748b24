import math

import pytest
import torch
import torch.nn.functional as F

from components.models.clip import CLIP, CLIPConfig, TextConfig, TextTransformer
from components.models.transformer import (
    MLP,
    Block,
    Decoder,
    DecoderLayer,
    Encoder,
    MultiHeadAttention,
    activation,
    causal_mask,
    padding_mask,
    quick_gelu,
    sinusoidal_positions,
)
from components.models.vit import ViTConfig, VisionTransformer


def tiny_clip_config() -> CLIPConfig:
    return CLIPConfig(
        embed_dim=16,
        vision=ViTConfig(image_size=16, patch_size=8, width=32, layers=2, heads=2),
        text=TextConfig(vocab_size=50, context_length=8, width=32, layers=2, heads=2),
    )


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(4)
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(width=16, heads=4)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 5, 16)
    mask = causal_mask(5)
    expected, _ = ref(x, x, x, attn_mask=~mask, need_weights=False)  # torch masks where True
    torch.testing.assert_close(ours(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_text_tower_is_causal_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    tower = TextTransformer(TextConfig(vocab_size=50, context_length=8, width=32, layers=2, heads=2)).eval()
    a = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0]])
    b = a.clone()
    b[0, 5:] = torch.tensor([9, 9, 9])  # change only positions after the end token
    # The pooled feature is at the end token (position 4 in a); with b it moves, so compare hidden states.
    x_a = tower.ln_final(tower.encoder(tower.token_embed(a) + tower.pos_embed, tower.attn_mask))
    x_b = tower.ln_final(tower.encoder(tower.token_embed(b) + tower.pos_embed, tower.attn_mask))
    torch.testing.assert_close(x_a[:, :5], x_b[:, :5])
    assert not torch.allclose(x_a[:, 5:], x_b[:, 5:])


def test_text_feature_is_taken_at_the_end_token():
    torch.manual_seed(0)
    tower = TextTransformer(TextConfig(vocab_size=50, context_length=8, width=32, layers=1, heads=2)).eval()
    tokens = torch.tensor([[1, 5, 2, 0, 0, 0, 0, 0], [1, 5, 6, 7, 8, 9, 3, 2]])
    hidden = tower.ln_final(tower.encoder(tower.token_embed(tokens) + tower.pos_embed, tower.attn_mask))
    features = tower(tokens)
    torch.testing.assert_close(features[0], hidden[0, 2])
    torch.testing.assert_close(features[1], hidden[1, 7])


def test_vit_and_clip_shapes_and_unit_norm_embeddings():
    cfg = tiny_clip_config()
    vit = VisionTransformer(cfg.vision)
    images = torch.randn(4, 3, 16, 16)
    assert vit.forward_tokens(images).shape == (4, 1 + 4, 32)
    assert vit(images).shape == (4, 32)
    model = CLIP(cfg)
    tokens = torch.tensor([[1, 4, 5, 2, 0, 0, 0, 0]] * 4)
    image_emb, text_emb, scale = model(images, tokens)
    assert image_emb.shape == text_emb.shape == (4, 16)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))


def test_logit_scale_is_clamped_at_100():
    model = CLIP(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    _, _, scale = model(torch.randn(1, 3, 16, 16), torch.tensor([[1, 2, 0, 0, 0, 0, 0, 0]]))
    torch.testing.assert_close(scale, torch.tensor(100.0))


def test_models_import_without_ray_or_mlflow():
    import subprocess
    import sys

    code = (
        "import sys, components.models.clip, components.models.vit, components.losses.contrastive;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('ray','mlflow')]; print(bad); sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# -- the shared blocks against torch's own layers, given the same weights ------------------------------------
# our parameter names → torch.nn.TransformerEncoderLayer / TransformerDecoderLayer's (cross_attn before attn)
TORCH_NAMES = [("cross_attn.qkv.", "multihead_attn.in_proj_"), ("cross_attn.proj.", "multihead_attn.out_proj."),
               ("attn.qkv.", "self_attn.in_proj_"), ("attn.proj.", "self_attn.out_proj."), ("mlp.fc1.", "linear1."),
               ("mlp.fc2.", "linear2."), ("ln_1.", "norm1."), ("ln_2.", "norm2."), ("ln_3.", "norm3.")]


def torch_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for ours, theirs in TORCH_NAMES:
            if ours in key:
                key = key.replace(ours, theirs)
                break
        out[key] = value
    return out


def test_padding_mask_lets_every_query_see_only_real_keys():
    valid = torch.tensor([[True, True, False], [True, True, True]])
    mask = padding_mask(valid)
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == torch.bool
    combined = causal_mask(3) & mask  # (B, 1, L, L)
    assert combined[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def test_sinusoidal_positions_follow_the_paper():
    table = sinusoidal_positions(7, 6)
    for p in range(7):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(3, 5).shape == (3, 5)  # odd widths end with a sine


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_equals_torch_transformer_encoder_with_look_ahead_and_padding(norm_first):
    torch.manual_seed(0)
    ours = Encoder(16, layers=2, heads=4, mlp_ratio=2.0, norm_first=norm_first, activation="relu").eval()
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    ref.load_state_dict(torch_names(ours.state_dict()))
    x = torch.randn(3, 6, 16)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]).bool()
    with torch.no_grad():
        got = ours(x, causal_mask(6) & padding_mask(valid))
        expected = ref(x, mask=~causal_mask(6), src_key_padding_mask=~valid, is_causal=True)  # torch: True = ignore
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_equals_torch_transformer_decoder(norm_first):
    torch.manual_seed(0)
    ours = Decoder(16, layers=2, heads=4, mlp_ratio=2.0, norm_first=norm_first, activation="gelu").eval()
    layer = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=norm_first)
    ref = torch.nn.TransformerDecoder(layer, 2).eval()
    ref.load_state_dict(torch_names(ours.state_dict()))
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    tgt_valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    src_valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]]).bool()
    with torch.no_grad():
        got = ours(x, memory, causal_mask(5) & padding_mask(tgt_valid), padding_mask(src_valid))
        expected = ref(x, memory, tgt_mask=~causal_mask(5), tgt_key_padding_mask=~tgt_valid,
                       memory_key_padding_mask=~src_valid)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_attention_weights_path_equals_the_fused_path():
    torch.manual_seed(0)
    block = Block(16, 4, norm_first=False).eval()
    x = torch.randn(2, 5, 16)
    mask = causal_mask(5) & padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool())
    with torch.no_grad():
        fused = block(x, mask)
        explicit, weights = block(x, mask, need_weights=True)
    torch.testing.assert_close(explicit, fused, atol=1e-6, rtol=0)
    assert weights.shape == (2, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    assert (weights[~mask.expand(2, 4, 5, 5)] == 0).all()  # nothing on masked keys
    encoder = Encoder(16, layers=3, heads=4).eval()
    with torch.no_grad():
        y, per_layer = encoder(x, need_weights=True)
        torch.testing.assert_close(y, encoder(x), atol=1e-6, rtol=0)
    assert len(per_layer) == 3 and all(w.shape == (2, 4, 5, 5) for w in per_layer)


def _torch_attention(ours):
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict({"in_proj_weight": ours.qkv.weight, "in_proj_bias": ours.qkv.bias,
                         "out_proj.weight": ours.proj.weight, "out_proj.bias": ours.proj.bias})
    return ref.eval()


def test_cross_attention_with_positions_on_queries_and_keys_only_equals_torch():
    """DETR: q = x + query_pos, k = memory + key_pos, v = memory (no positions)."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).eval()
    ref = _torch_attention(ours)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    query_pos, key_pos = torch.randn(1, 3, 16), torch.randn(1, 6, 16)
    src_valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    with torch.no_grad():
        expected, expected_weights = ref(x + query_pos, memory + key_pos, memory, key_padding_mask=~src_valid,
                                         average_attn_weights=False)
        got = ours(x, padding_mask(src_valid), memory=memory, query_pos=query_pos, key_pos=key_pos)
        explicit, weights = ours(x, padding_mask(src_valid), memory=memory, query_pos=query_pos, key_pos=key_pos,
                                 need_weights=True)
        plain = ours(x, memory=memory)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)
    assert not torch.allclose(plain, got)


def test_block_positions_reach_queries_and_keys_but_not_values():
    torch.manual_seed(0)
    block = Block(16, 4).eval()
    ref = _torch_attention(block.attn)
    x, pos = torch.randn(2, 5, 16), torch.randn(1, 5, 16)
    with torch.no_grad():
        h = block.ln_1(x)
        attended, _ = ref(h + pos, h + pos, h)  # values without positions
        expected = x + attended
        expected = expected + block.mlp(block.ln_2(expected))
        torch.testing.assert_close(block(x, pos=pos), expected, atol=1e-5, rtol=0)


def test_decoder_layer_positions_follow_detr():
    """Self-attention: q = k = x + query_pos, v = x; cross-attention: q = x + query_pos, k = memory + memory_pos."""
    torch.manual_seed(0)
    layer = DecoderLayer(16, 4, norm_first=False).eval()
    self_ref, cross_ref = _torch_attention(layer.attn), _torch_attention(layer.cross_attn)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    query_pos, memory_pos = torch.randn(1, 3, 16), torch.randn(1, 6, 16)
    with torch.no_grad():
        h = layer.ln_1(x + self_ref(x + query_pos, x + query_pos, x)[0])
        h = layer.ln_2(h + cross_ref(h + query_pos, memory + memory_pos, memory)[0])
        expected = layer.ln_3(h + layer.mlp(h))
        got, (self_weights, cross_weights) = layer(x, memory, query_pos=query_pos, memory_pos=memory_pos,
                                                   need_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert self_weights.shape == (2, 4, 3, 3) and cross_weights.shape == (2, 4, 3, 6)


def test_quick_gelu_and_eps_reach_every_layer():
    encoder = Encoder(16, layers=2, heads=2, eps=1e-6, activation="quick_gelu")
    decoder = Decoder(16, layers=2, heads=2, eps=1e-6, activation="quick_gelu")
    norms = [m for m in [*encoder.modules(), *decoder.modules()] if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 2 * 3 and all(n.eps == 1e-6 for n in norms)
    mlps = [m for m in [*encoder.modules(), *decoder.modules()] if isinstance(m, MLP)]
    assert len(mlps) == 4 and all(m.act is quick_gelu for m in mlps)
    mlp = mlps[0]
    x = torch.randn(3, 16)
    torch.testing.assert_close(mlp(x), mlp.fc2(mlp.fc1(x) * torch.sigmoid(1.702 * mlp.fc1(x))))
    assert Block(16, 2).ln_1.eps == 1e-5 and Block(16, 2).mlp.act is F.gelu  # ViT and CLIP's defaults


def test_activations_by_name():
    x = torch.linspace(-4, 4, 50)
    torch.testing.assert_close(activation("gelu")(x), F.gelu(x))
    torch.testing.assert_close(activation("gelu_tanh")(x), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(activation("relu")(x), x.clamp(min=0))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(8, activation="swish")


def test_dropouts_reach_their_places():
    block = Block(16, 4, dropout=0.1, attn_dropout=0.2)
    assert block.attn.dropout == 0.2 and block.drop.p == 0.1 and block.mlp.dropout.p == 0.1
    block.train()
    x = torch.randn(2, 5, 16)
    assert not torch.equal(block(x), block(x))
    block.eval()
    assert torch.equal(block(x), block(x))
