from components.data.loading.tokenizer import EOT, PAD, SOT, encode_captions, train_caption_tokenizer

CAPTIONS = ["a handwritten seven", "the digit three written by hand", "a scan of a handwritten nine"] * 20


def test_captions_are_framed_by_start_and_end_tokens_and_padded():
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    ids = encode_captions(tok, ["a handwritten seven"], context_length=12)
    sot, eot, pad = (tok.token_to_id(t) for t in (SOT, EOT, PAD))
    row = ids[0].tolist()
    assert pad == 0 and row[0] == sot
    end = row.index(eot)
    assert all(t == pad for t in row[end + 1 :])
    assert tok.decode(row[1:end]).strip() == "a handwritten seven"


def test_long_captions_are_truncated_keeping_the_end_token():
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    ids = encode_captions(tok, [" ".join(["handwritten"] * 50)], context_length=6)
    assert ids.shape == (1, 6)
    assert ids[0, -1] == tok.token_to_id(EOT)


def test_unseen_words_still_encode_without_unknown_tokens():
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    ids = encode_captions(tok, ["zebra Ünïcode 123"], context_length=32)
    end = ids[0].tolist().index(tok.token_to_id(EOT))
    assert tok.decode(ids[0, 1:end].tolist()).strip() == "zebra ünïcode 123"  # lowercased by the normaliser
