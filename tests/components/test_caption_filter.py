import pytest

from components.data.ingest.caption_filter import check_caption
from components.data.ingest.image_processing import ImageError


def category(raw, **bounds) -> str:
    with pytest.raises(ImageError) as err:
        check_caption(raw, **bounds)
    return err.value.category


def test_valid_captions_come_back_as_text_unchanged():
    assert check_caption("über café ".encode()) == "über café "
    assert check_caption("a dog", min_length=5, max_length=5) == "a dog"


def test_invalid_utf8_is_its_own_category():
    assert category(b"caf\xe9") == "invalid_caption"
    assert category(b"caf\xe9".decode("utf-8", "surrogateescape")) == "invalid_caption"


@pytest.mark.parametrize("raw", [None, b"", "   ", b"\t\n"])
def test_empty_captions(raw):
    assert category(raw) == "empty_caption"


def test_length_bounds_count_stripped_characters():
    assert category("  ab  ", min_length=3) == "caption_length"
    assert category("abcdef", max_length=5) == "caption_length"
    assert check_caption("  abc  ", min_length=3, max_length=3) == "  abc  "
