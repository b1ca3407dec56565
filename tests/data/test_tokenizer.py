"""CLIP BPE tokenizer: round trip, start/end markers, truncation, padding, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch

from facerep.data.tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


SENTENCES = [
    "a photo of a smiling person wearing glasses",
    "Close up of   someone with LONG blond hair",
    "headshot of a bald person turned to the left",
]


def test_round_trip_gives_the_cleaned_lower_cased_text(tok: Tokenizer) -> None:
    ids = tok(SENTENCES)
    assert ids.shape == (3, CLIP_CONTEXT_LENGTH) and ids.dtype == torch.int64
    assert tok.vocab_size == CLIP_VOCAB_SIZE and int(ids.max()) < CLIP_VOCAB_SIZE
    for row, text in zip(ids, SENTENCES, strict=True):
        assert tok.decode(row) == " ".join(text.lower().split())
    assert torch.equal(tok(SENTENCES[0]), ids[:1])  # one string = a batch of one
    assert tok.decode(tok("Close-up, smiling.")[0]) == "close - up , smiling ."  # punctuation: own tokens


def test_start_end_and_padding(tok: Tokenizer) -> None:
    for row in tok([*SENTENCES, ""]):
        n = int((row != 0).sum())
        assert row[0] == tok.sot_id and row[n - 1] == tok.eot_id
        assert (row[n:] == 0).all() and not (row[1 : n - 1] == tok.eot_id).any()
    assert tok("")[0, :3].tolist() == [tok.sot_id, tok.eot_id, 0]


def test_truncation_keeps_end_of_text_last() -> None:
    short = Tokenizer(context_length=8)
    (row,) = short("one two three four five six seven eight nine ten")
    assert row.shape == (8,) and row[0] == short.sot_id and row[-1] == short.eot_id
    assert short.decode(row) == "one two three four five six"
    with pytest.raises(ValueError, match="context_length"):
        Tokenizer(context_length=1)


def test_pickles_for_workers(tok: Tokenizer) -> None:
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(SENTENCES), tok(SENTENCES))
    one = pickle.loads(pickle.dumps(Tokenizer(16).encode))
    ids = one(SENTENCES[0])
    assert ids.shape == (16,) and ids.dtype == torch.int64
    assert torch.equal(ids, Tokenizer(16)(SENTENCES[0])[0])
