"""Caption tokenizer: a byte-level BPE trained with HF tokenizers, saved as JSON.

Every caption becomes ``[SOT] tokens [EOT]`` truncated to the context length
(the end token is kept) and padded with ``[PAD]`` (id 0), the layout the CLIP
text tower expects. Byte-level BPE has no unknown tokens, so prompts with
words never seen in training still encode.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, SOT, EOT = "[PAD]", "[SOT]", "[EOT]"
SPECIAL_TOKENS = [PAD, SOT, EOT]  # ids 0, 1, 2


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer)
    return tokenizer


def encode_captions(tokenizer: Tokenizer, captions: list[str], context_length: int) -> np.ndarray:
    """Token ids (N, context_length) int64: start token, caption, end token, then padding."""
    sot, eot = tokenizer.token_to_id(SOT), tokenizer.token_to_id(EOT)
    out = np.zeros((len(captions), context_length), dtype=np.int64)  # PAD is id 0
    for i, encoding in enumerate(tokenizer.encode_batch(captions, add_special_tokens=False)):
        ids = [sot, *encoding.ids[: context_length - 2], eot]
        out[i, : len(ids)] = ids
    return out
