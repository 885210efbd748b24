"""Caption checks for image-text samples: pure, one caption at a time.

Captions arrive as raw bytes (see ``url_table``), so a caption that is not
UTF-8 becomes a counted failure of its sample rather than a failed read of
the whole table. Failures are ``ImageError`` so that the shard processor
counts them with the image failures, by category.
"""

from __future__ import annotations

from components.data.ingest.image_processing import ImageError


def _decode(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")  # lone surrogates: undecodable bytes kept by a surrogateescape reader
        except UnicodeEncodeError as exc:
            raise ImageError("invalid_caption", f"caption is not valid UTF-8: {exc.reason}") from exc
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageError("invalid_caption", f"caption is not valid UTF-8 at byte {exc.start}") from exc


def check_caption(raw: bytes | str | None, min_length: int = 1, max_length: int | None = None) -> str:
    """The caption as text, or ``ImageError`` ``invalid_caption``, ``empty_caption`` or ``caption_length``.

    Lengths count characters of the caption without surrounding whitespace;
    ``max_length`` None means no upper bound. The caption is returned unchanged.
    """
    caption = _decode(raw)
    length = len(caption.strip())
    if length == 0:
        raise ImageError("empty_caption", "row has an empty caption")
    if length < min_length or (max_length is not None and length > max_length):
        bounds = f"[{min_length}, {'inf' if max_length is None else max_length}]"
        raise ImageError("caption_length", f"caption has {length} characters, outside {bounds}")
    return caption
