"""tvp's BERT against transformers' (built offline from small random configs, weights copied), and the HF layout."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from components.models.bert import (  # noqa: E402
    BERT_PRESETS,
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    bert_config,
)
from components.models.bert_hf import (  # noqa: E402
    bert_config_from_hf,
    export_hf_folder,
    import_hf_folder,
    weights_from_hf,
    weights_to_hf,
)

VOCAB = 101
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=24, type_vocab_size=2)


def hf_config(**overrides):
    return transformers.BertConfig(**{**SMALL, **overrides})


def hf_model(cls=None, **overrides):
    torch.manual_seed(0)
    model = (cls or transformers.BertForPreTraining)(hf_config(**overrides)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm affine, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def batch():
    """Two segments, and padding in two of the three rows."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 12), generator=g)
    valid = torch.ones(3, 12, dtype=torch.long)
    valid[1, 8:] = 0
    valid[2, 5:] = 0
    ids[valid == 0] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    types[1, 4:8] = 1
    return ids, types, valid


def ours_from(hf, cls=BertForPreTraining, *args):
    cfg = bert_config_from_hf(hf.config.to_dict())
    model = cls(cfg, *args).eval()
    model.load_state_dict(weights_from_hf(hf.state_dict(), cfg), strict=True)
    return model


def test_pretraining_logits_equal_transformers_with_padding_and_segments():
    hf = hf_model()
    ours = ours_from(hf)
    ids, types, valid = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=valid)
        got = ours(ids, types, valid)
        flat = torch.tensor([0, 5, 13, 30])
        gathered = ours(ids, types, valid, masked_positions=flat)
    assert got.mlm_logits.shape == (3, 12, VOCAB) and got.nsp_logits.shape == (3, 2) and got.attentions is None
    torch.testing.assert_close(got.mlm_logits, expected.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.nsp_logits, expected.seq_relationship_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(gathered.mlm_logits, got.mlm_logits.reshape(-1, VOCAB)[flat], atol=1e-6, rtol=0)
    torch.testing.assert_close(gathered.nsp_logits, got.nsp_logits)


def test_sequence_classification_equals_transformers_and_takes_pretraining_weights(tmp_path):
    hf = hf_model(transformers.BertForSequenceClassification, num_labels=3)
    ours = ours_from(hf, BertForSequenceClassification, 3)
    ids, types, valid = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=valid).logits
        torch.testing.assert_close(ours(ids, types, valid), expected, atol=1e-5, rtol=0)
    export_hf_folder(tmp_path, ours.cfg, ours.state_dict())
    back, info = transformers.BertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and back.config.num_labels == 3
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(input_ids=ids, token_type_ids=types, attention_mask=valid).logits,
                                   expected, atol=1e-6, rtol=0)
    pretrained = BertForPreTraining(ours.cfg).state_dict()
    result = ours.load_state_dict({k: v for k, v in pretrained.items() if k.startswith("bert.")}, strict=False)
    assert sorted(result.missing_keys) == ["classifier.bias", "classifier.weight"] and not result.unexpected_keys


def test_attentions_are_per_layer_distributions_equal_to_transformers():
    hf = hf_model(attn_implementation="eager")
    ours = ours_from(hf)
    ids, types, valid = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=valid, output_attentions=True).attentions
        got = ours(ids, types, valid, output_attentions=True)
        base = ours.bert(ids, types, valid, output_attentions=True)
    assert len(got.attentions) == 2 and len(base) == 3
    for mine, theirs in zip(got.attentions, expected):
        assert mine.shape == (3, 4, 12, 12)
        torch.testing.assert_close(mine.sum(-1), torch.ones(3, 4, 12))
        assert mine[2, :, :, 5:].abs().max() == 0  # padded keys get no attention
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)


def test_parameter_counts_equal_transformers_at_base_and_large():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for name in ("base", "large"):
        p = BERT_PRESETS[name]
        hc = transformers.BertConfig(hidden_size=p["hidden_size"], num_hidden_layers=p["layers"],
                                     num_attention_heads=p["heads"], intermediate_size=p["intermediate_size"])
        with torch.device("meta"):
            theirs = transformers.BertForPreTraining(hc)
            ours = BertForPreTraining(bert_config(name))
        assert count(ours) == count(theirs), name
    assert count(ours) == 336_226_108  # large, with the MLM and NSP heads


def test_export_loads_in_transformers_with_every_key_and_equal_logits(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, layers=2, heads=4, intermediate_size=128, max_position=24)
    ours = BertForPreTraining(cfg).eval()
    with torch.no_grad():
        ours.mlm.bias.normal_()
    export_hf_folder(tmp_path, cfg, ours.state_dict(), "".join(f"tok{i}\n" for i in range(VOCAB)))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "vocab.txt"]
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, types, valid = batch()
    with torch.no_grad():
        expected = hf.eval()(input_ids=ids, token_type_ids=types, attention_mask=valid)
        got = ours(ids, types, valid)
    torch.testing.assert_close(got.mlm_logits, expected.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.nsp_logits, expected.seq_relationship_logits, atol=1e-5, rtol=0)


def test_import_of_a_save_pretrained_folder_round_trips(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    cfg, state, vocab = import_hf_folder(tmp_path / "hf")
    assert (cfg.layers, cfg.hidden_size, cfg.heads, cfg.vocab_size, cfg.max_position) == (2, 32, 4, VOCAB, 24)
    assert vocab == "[PAD]\n[UNK]\nhello\n"
    ours = BertForPreTraining(cfg).eval()
    ours.load_state_dict(state, strict=True)
    back = weights_to_hf(ours.state_dict(), cfg)
    original = {k: v for k, v in hf.state_dict().items() if not k.startswith("cls.predictions.decoder.")}
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    export_hf_folder(tmp_path / "again", cfg, ours.state_dict(), vocab)
    cfg2, state2, vocab2 = import_hf_folder(tmp_path / "again")
    assert cfg2 == cfg and vocab2 == vocab and all(torch.equal(state2[k], state[k]) for k in state)


def test_tf_era_names_and_bare_encoder_checkpoints_load_and_missing_heads_are_named():
    hf = hf_model(transformers.BertModel)
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in hf.state_dict().items()}
    cfg = bert_config_from_hf(hf.config.to_dict())
    with pytest.warns(UserWarning, match="no MLM head.*no NSP head"):
        state = weights_from_hf(renamed, cfg)
    ours = BertForPreTraining(cfg).eval()
    result = ours.load_state_dict(state, strict=False)
    assert {k.split(".")[0] for k in result.missing_keys} == {"mlm", "nsp"} and not result.unexpected_keys
    ids, types, valid = batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=valid)
        sequence, pooled = ours.bert(ids, types, valid)
    torch.testing.assert_close(sequence, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="bert.encoder.layers.1.ln_2.weight"):
        weights_from_hf({k: v for k, v in hf.state_dict().items() if k != "encoder.layer.1.output.LayerNorm.weight"},
                        cfg)


def test_pickled_checkpoint_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config().to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="pytorch_model.bin.*does not unpickle.*[Cc]onvert"):
        import_hf_folder(tmp_path)


@pytest.mark.parametrize("key, value", [("position_embedding_type", "relative_key"), ("hidden_act", "gelu_new"),
                                        ("is_decoder", True), ("tie_word_embeddings", False)])
def test_unsupported_config_settings_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=f"^config.json: {key}="):
        bert_config_from_hf({**hf_config().to_dict(), key: value})


def test_presets_are_the_released_sizes():
    assert {k: (p["layers"], p["hidden_size"], p["heads"]) for k, p in BERT_PRESETS.items()} == {
        "tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
        "base": (12, 768, 12), "large": (24, 1024, 16)}
    assert bert_config("tiny", vocab_size=500).vocab_size == 500
    with pytest.raises(ValueError, match="heads"):
        BertConfig(hidden_size=100, heads=3)
    odd = BertModel(BertConfig(vocab_size=50, hidden_size=312, heads=12, intermediate_size=1200, layers=1))
    assert odd.encoder.layers[0].mlp.fc1.out_features == 1200  # TinyBERT's sizes: not a round ratio
    model = BertModel(bert_config("tiny", vocab_size=50, max_position=8))
    assert model.embeddings.word_embed.weight[0].abs().max() == 0  # the padding row
    with pytest.raises(ValueError, match="longer than max_position"):
        model(torch.ones(1, 9, dtype=torch.long))
