"""CLIP's byte-pair-encoding tokenizer (OpenAI CLIP, FaRL, open_clip): captions -> token ids.

The vocabulary (49,408 tokens: 49,152 BPE merges' symbols plus ``<start_of_text>`` and ``<end_of_text>``)
ships inside the ``open-clip-torch`` wheel, so nothing is downloaded. Text is cleaned (ftfy, whitespace)
and lower-cased as CLIP does; every sequence is ``[SOT, tokens..., EOT, 0, ...]`` of ``context_length``
ids, truncated so that EOT always ends it. EOT has the largest id, which is how the text tower finds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

CLIP_CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408


class Tokenizer:
    """``tokenizer(texts) -> [N, context_length]`` int64 ids; ``decode(ids)`` gives back the cleaned text.

    Picklable, so DataLoader workers can tokenize captions.
    """

    def __init__(self, context_length: int = CLIP_CONTEXT_LENGTH) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        from open_clip.tokenizer import SimpleTokenizer  # open_clip and transformers: 1 s to import

        self.context_length = int(context_length)
        self._bpe = SimpleTokenizer(context_length=self.context_length)
        self.vocab_size = len(self._bpe.encoder)
        self.sot_id, self.eot_id = int(self._bpe.sot_token_id), int(self._bpe.eot_token_id)

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        """``texts`` (one string or several) -> ids ``[N, context_length]`` (zero-padded)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self._bpe(batch, context_length=self.context_length).to(torch.int64)

    def encode(self, text: str) -> Tensor:
        """One caption -> ``[context_length]`` ids (what the data pipeline stores per sample)."""
        return self(text)[0]

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The cleaned text of one id sequence (start/end markers and padding removed)."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        kept = [v for v in values if v not in (0, self.sot_id, self.eot_id)]
        return self._bpe.decode(kept).strip()
