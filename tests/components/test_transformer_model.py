"""The original encoder-decoder Transformer: equal to torch.nn.Transformer given the same weights, and it learns."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from components.models.transformer import (
    PRESETS,
    Transformer,
    TransformerConfig,
    causal_mask,
    sinusoidal_positions,
    transformer_config,
)
from tests.components.test_transformer_blocks import torch_names

PAD, BOS = 0, 1


def tiny_config(**overrides) -> TransformerConfig:
    fields = dict(src_vocab_size=12, tgt_vocab_size=12, width=32, encoder_layers=2, decoder_layers=2, heads=4,
                  mlp_ratio=2.0, dropout=0.0, max_length=16)
    return TransformerConfig(**{**fields, **overrides})


def torch_reference(model: Transformer) -> torch.nn.Transformer:
    """torch.nn.Transformer holding ``model``'s encoder and decoder weights (final norms only when pre-norm)."""
    cfg = model.cfg
    layer = dict(d_model=cfg.width, nhead=cfg.heads, dim_feedforward=int(cfg.width * cfg.mlp_ratio), dropout=0.0,
                 activation=cfg.activation, layer_norm_eps=cfg.eps, batch_first=True, norm_first=cfg.norm_first)
    final_norm = (lambda: torch.nn.LayerNorm(cfg.width, eps=cfg.eps)) if cfg.norm_first else (lambda: None)
    encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(**layer), cfg.encoder_layers,
                                          norm=final_norm(), enable_nested_tensor=False)
    decoder = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(**layer), cfg.decoder_layers,
                                          norm=final_norm())
    ref = torch.nn.Transformer(cfg.width, cfg.heads, custom_encoder=encoder, custom_decoder=decoder,
                               batch_first=True)
    state = {k.replace("encoder_norm.", "encoder.norm.").replace("decoder_norm.", "decoder.norm."): v
             for k, v in model.state_dict().items() if "embed" not in k and not k.startswith("output")}
    ref.load_state_dict(torch_names(state))
    return ref.eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_equals_torch_nn_transformer_given_the_same_weights(norm_first):
    torch.manual_seed(0)
    model = Transformer(tiny_config(norm_first=norm_first)).eval()
    ref = torch_reference(model)
    src = torch.tensor([[3, 4, 5, 6, 7, 8, 9], [5, 6, 7, 2, PAD, PAD, PAD]])
    tgt = torch.tensor([[BOS, 9, 8, 7, 6], [BOS, 2, 7, PAD, PAD]])
    with torch.no_grad():
        logits = model(src, tgt)

        def embed(tokens):  # the paper's input: sqrt(d)-scaled embeddings plus sinusoidal positions
            table = sinusoidal_positions(tokens.shape[1], 32)
            return model.src_embed(tokens) * math.sqrt(32) + table

        hidden = ref(embed(src), embed(tgt), tgt_mask=~causal_mask(5), src_key_padding_mask=src == PAD,
                     tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD)  # torch: True = ignore
        expected = hidden @ model.src_embed.weight.T  # output projection tied to the embeddings
    assert logits.shape == (2, 5, 12)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_presets_are_the_papers_base_and_big_models():
    base, big = transformer_config("base"), transformer_config("big", dropout=0.1)
    assert (base.width, base.heads, int(base.width * base.mlp_ratio), base.encoder_layers, base.dropout) == (
        512, 8, 2048, 6, 0.1)
    assert (big.width, big.heads, int(big.width * big.mlp_ratio), big.decoder_layers, big.dropout) == (
        1024, 16, 4096, 6, 0.1)
    assert set(PRESETS) == {"base", "big"} and not base.norm_first and base.activation == "relu"
    with pytest.raises(ValueError, match="unknown Transformer preset 'huge'"):
        transformer_config("huge")
    with pytest.raises(ValueError, match="share_embeddings needs one vocabulary"):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=11)


def test_weights_round_trip_through_safetensors_with_and_without_shared_embeddings():
    for shared in (True, False):
        torch.manual_seed(0)
        model = Transformer(tiny_config(share_embeddings=shared, tgt_vocab_size=12 if shared else 9,
                                        norm_first=True)).eval()
        copy = Transformer(model.cfg).eval()
        copy.load_state_dict(load_safetensors(save_safetensors(model.state_dict())), strict=True)
        src, tgt = torch.tensor([[3, 4, 5]]), torch.tensor([[BOS, 4, 2]])
        torch.testing.assert_close(copy(src, tgt), model(src, tgt))
        assert model(src, tgt).shape == (1, 3, model.cfg.tgt_vocab_size)


def test_greedy_decoding_does_not_look_ahead():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    src = torch.tensor([[3, 4, 5, 6]])
    out = model.greedy_decode(src, BOS, 5)
    with torch.no_grad():  # one teacher-forced pass over its own output predicts the same tokens
        again = model(src, torch.cat([torch.tensor([[BOS]]), out[:, :-1]], dim=1)).argmax(-1)
    assert out.shape == (1, 5) and torch.equal(out, again)


def _reversal_batch(size: int, generator: torch.Generator, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of 3..length symbols (ids 2..11) padded with 0; targets their reversal."""
    lengths = torch.randint(3, length + 1, (size,), generator=generator)
    valid = torch.arange(length)[None] < lengths[:, None]
    src = torch.randint(2, 12, (size, length), generator=generator).masked_fill(~valid, PAD)
    tgt = torch.zeros_like(src)
    for i, n in enumerate(lengths.tolist()):
        tgt[i, :n] = src[i, :n].flip(0)
    return src, tgt


def test_a_tiny_transformer_learns_to_reverse_sequences():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and the test runs beside others
    try:
        torch.manual_seed(0)
        model = Transformer(tiny_config(max_length=9))  # the paper's post-norm, ReLU, tied embeddings
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
        generator = torch.Generator().manual_seed(1)
        for _ in range(300):
            src, tgt = _reversal_batch(64, generator)
            tgt_in = torch.cat([torch.full((64, 1), BOS), tgt[:, :-1]], dim=1)  # shifted right
            loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt.flatten(), ignore_index=PAD)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        src, tgt = _reversal_batch(500, torch.Generator().manual_seed(99))
        out = model.eval().greedy_decode(src, BOS, 8)
    finally:
        torch.set_num_threads(threads)
    valid = tgt != PAD
    token_accuracy = (out == tgt)[valid].float().mean().item()
    sequence_accuracy = ((out == tgt) | ~valid).all(dim=1).float().mean().item()
    assert token_accuracy > 0.9 and sequence_accuracy > 0.8, (token_accuracy, sequence_accuracy)  # chance: 0.1
