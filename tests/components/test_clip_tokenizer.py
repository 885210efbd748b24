import gzip
import importlib.util
import json
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from components.data.loading.clip_tokenizer import (
    CONFIG_FILE, TOKENIZER_FILE, CaptionTokenizer, ClipTokenizer, byte_characters, load_text_tokenizer,
    openai_clip_tokenizer, train_clip_tokenizer,
)
from components.data.loading.tokenizer import encode_captions, train_caption_tokenizer

_OPEN_CLIP = importlib.util.find_spec("open_clip")
pytestmark = pytest.mark.skipif(_OPEN_CLIP is None, reason="open_clip_torch (the reference) is not installed")


@pytest.fixture(scope="module")
def reference():
    """open_clip's tokenizer module loaded alone: its ``tokenize`` without the package's model imports (~7 s)."""
    path = f"{_OPEN_CLIP.submodule_search_locations[0]}/tokenizer.py"
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

HARD_CAPTIONS = [
    "a photo of a cat",
    "A Photo Of A CAT sitting on the MAT",
    "",
    "   ",
    # Unicode: accents, CJK, emoji (with skin tone and ZWJ sequences), other scripts
    "Ça va? Très bien, merci! naïve café résumé Ångström",
    "日本語のテキスト、東京タワー。中文字符 한국어",
    "emoji 🐶🐱 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ test",
    "Москва ΑΘΗΝΑ ΣΊΣΥΦΟΣ Ελληνικά عربى עברית हिन्दी ไทย",
    "ﬁne ligatures ＦＵＬＬＷＩＤＴＨ ①②③ ½ ² ³ x² Ⅻ İstanbul straße ǅ",
    # HTML entities, double-escaped too
    "fish &amp; chips",
    "it&#39;s a dog&#x27;s life &quot;quoted&quot;",
    "salt &amp;amp; pepper &amp;#39; &lt;b&gt;bold&lt;/b&gt; &nbsp;x &copy; 2020",
    "<b>tags</b> & lone ampersand; &unknown; &#0; &#xD800;",
    # mojibake, curly quotes, control characters
    "cafÃ© Ã©tÃ© doesnÃ¢â‚¬â„¢t",
    "The Mona Lisa doesnâ€™t have eyebrows.",
    "“smart quotes” and ‘single’ — dashes – … ellipsis",
    "bell\x07 escape\x1b[31mred\x1b[0m del\x7f nul\x00 soft\xadhyphen",
    # odd whitespace
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em\u3000ideographic",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom \u2060word",
    "\x1c\x1d\x1e\x1f separators \x85 next line \u2028 \u2029",
    # contractions, in and out of case and context
    "don't can't we're they've I'm you'll he'd IT'S WE'RE O'Neil rock'n'roll",
    "'s 't 're 've 'm 'll 'd ''s '''",
    "dog's dogs' the '90s ’tis ʼs",
    "'ſ 'K 'ſt ΣΑΣ",
    # numbers and punctuation runs
    "the 1234 numbers 3.14159 -42 1,000,000 0x1F 2nd 10% $5.99 #1",
    "٣٤ ४२ ௫ 𝟙𝟚 ¹²³",
    "wow!!! ... ?!?! --- *** (parens) [brackets] {braces} a/b\\c @user #tag http://x.com/a?b=c",
    "a_b_c snake_case CamelCase kebab-case e-mail",
    # special tokens written in the caption
    "<start_of_text> hi",
    "x!<end_of_text>y",
    "hello <end_of_text><start_of_text> world <END_OF_TEXT> <start_of_text",
    # a character OpenAI's pattern matches with no alternative
    "ypogegrammeni \u0345 a\u0345b '\u0345s",
    # long captions
    " ".join(["word"] * 100),
    "a photograph of " + ", ".join(f"item {i}" for i in range(60)),
    "supercalifragilisticexpialidocious" * 20,
]


@pytest.fixture(scope="module")
def openai():
    return openai_clip_tokenizer()


@pytest.fixture(scope="module")
def openai_files(openai):
    return openai.files()


@pytest.mark.parametrize("context_length", [77, 16, 5, 2, 1])
def test_openai_vocabulary_gives_open_clip_ids(openai, reference, context_length):
    ours = openai.encode(HARD_CAPTIONS, context_length)
    theirs = reference.tokenize(HARD_CAPTIONS, context_length=context_length).numpy()
    assert ours.dtype == np.int64 and ours.shape == (len(HARD_CAPTIONS), context_length)
    for caption, a, b in zip(HARD_CAPTIONS, ours, theirs):
        assert a.tolist() == b.tolist(), repr(caption)


def test_long_captions_are_cut_keeping_the_end_token(openai):
    ids = openai.encode([" ".join(["word"] * 100), "short"])
    assert (openai.start_id, openai.end_id, openai.vocab_size) == (49406, 49407, 49408)
    assert ids[0, 0] == openai.start_id and ids[0, -1] == openai.end_id and (ids[0] != 0).all()
    assert ids[1].tolist()[:3] == [openai.start_id, ids[1, 1], openai.end_id] and (ids[1, 3:] == 0).all()
    assert openai.encode("a single string").shape == (1, 77)


def test_every_assigned_character_splits_as_open_clip(openai, reference):
    chars = [chr(c) for c in range(0, 0x110000, 7) if not 0xD800 <= c < 0xE000
             and unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs") and not chr(c).isspace()]
    text = " ".join(f"a{c}'{c}1{c}" for c in chars)
    assert openai.token_ids([text])[0] == reference._tokenizer.encode(text)


def test_vocabulary_is_found_without_importing_open_clip():
    code = ("import sys; from components.data.loading.clip_tokenizer import openai_vocab_path; "
            "p = openai_vocab_path(); assert 'open_clip' not in sys.modules; print(p.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bpe_simple_vocab_16e6.txt.gz"


def test_an_explicit_vocabulary_file_is_read_in_openai_layout(tmp_path):
    path = tmp_path / "tiny_vocab.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    tok = openai_clip_tokenizer(path, context_length=8)
    assert (tok.vocab_size, tok.start_id, tok.end_id) == (518, 516, 517)
    vocab = tok.tokenizer.get_vocab()
    assert [vocab[t] for t in ("!", "!</w>", "ca", "cat</w>", "do", "dog</w>")] == [0, 256, 512, 513, 514, 515]
    assert tok.encode("Cat, DOG!").tolist() == [[516, 513, 267, 515, 256, 517, 0, 0]]


def test_openai_tokenizer_round_trips_through_its_files(openai, openai_files):
    files = openai_files
    assert set(files) == {TOKENIZER_FILE, CONFIG_FILE}
    assert json.loads(files[CONFIG_FILE])["context_length"] == 77
    loaded = load_text_tokenizer(files)
    assert isinstance(loaded, ClipTokenizer)
    assert np.array_equal(loaded.encode(HARD_CAPTIONS), openai.encode(HARD_CAPTIONS))


CAPTIONS = [
    "a handwritten seven on white paper",
    "the digit three written by hand",
    "a scan of a handwritten nine, slightly rotated",
    "Two cats sleeping on a sofa; it's cosy",
    "a dog's toy & a ball: 3 of them",
] * 40


def test_trained_tokenizer_keeps_openai_layout_and_round_trips():
    tok = train_clip_tokenizer(CAPTIONS, vocab_size=590, context_length=24)
    assert tok.vocab_size == 590 and (tok.start_id, tok.end_id, tok.pad_id) == (588, 589, 0)
    vocab = tok.tokenizer.get_vocab()
    chars = byte_characters()
    assert all(vocab[c] == i and vocab[c + "</w>"] == 256 + i for i, c in enumerate(chars))

    ids = tok.encode(["A handwritten SEVEN", "zebra Ünïcode 123 🐶", " ".join(["handwritten"] * 40)])
    assert ids.shape == (3, 24) and ids.dtype == np.int64
    assert (ids[:, 0] == tok.start_id).all() and ids[2, -1] == tok.end_id
    first = ids[0].tolist()
    end = first.index(tok.end_id)
    assert end == 4 and all(t == 0 for t in first[end + 1:])  # "a", "handwritten", "seven": learnt words
    assert tok.decode(ids[0]) == "a handwritten seven"
    assert tok.decode(ids[1]) == "zebra ünïcode 1 2 3 🐶"  # unseen text still encodes, digit by digit

    loaded = load_text_tokenizer(tok.files())
    assert isinstance(loaded, ClipTokenizer) and loaded.context_length == 24
    assert np.array_equal(loaded.encode(CAPTIONS[:5]), tok.encode(CAPTIONS[:5]))
    assert np.array_equal(loaded.encode(CAPTIONS[:5], 9), tok.encode(CAPTIONS[:5], 9))


def test_trained_tokenizer_splits_words_as_openai():
    tok = train_clip_tokenizer(CAPTIONS, vocab_size=2000)
    assert tok.vocab_size < 2000 and tok.end_id == tok.vocab_size - 1  # the captions ran out of pairs
    words = [w for w, _ in tok.tokenizer.pre_tokenizer.pre_tokenize_str("it's 42 cats!!")]
    assert words == ["it", "'s", "4", "2", "cats", "!!"]
    with pytest.raises(ValueError):
        train_clip_tokenizer(CAPTIONS, vocab_size=513)


def test_caption_tokenizer_loads_and_encodes_as_before():
    old = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    loaded = load_text_tokenizer({TOKENIZER_FILE: old.to_str()})
    assert isinstance(loaded, CaptionTokenizer) and (loaded.start_id, loaded.end_id, loaded.pad_id) == (1, 2, 0)
    texts = CAPTIONS[:5] + ["zebra Ünïcode 123", "", " ".join(["handwritten"] * 50)]
    for length in (77, 12, 3):
        assert np.array_equal(loaded.encode(texts, length), encode_captions(old, texts, length))
    assert loaded.files() == {TOKENIZER_FILE: old.to_str()}
    with pytest.raises(ValueError):
        loaded.encode(texts)  # an old tokenizer carries no context length


def test_loader_refuses_what_it_does_not_know(tmp_path):
    path = tmp_path / "tiny_vocab.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\nc a\n")
    files = openai_clip_tokenizer(path).files()
    with pytest.raises(ValueError):
        load_text_tokenizer({**files, CONFIG_FILE: json.dumps({"kind": "wordpiece"})})
    with pytest.raises(ValueError):
        load_text_tokenizer({TOKENIZER_FILE: files[TOKENIZER_FILE]})  # a CLIP tokenizer without its config
