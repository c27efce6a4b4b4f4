"""The world's word-level tokenizer."""

from __future__ import annotations

import torch

from vlmbench.world.datasets import WORLD_DATASETS
from vlmbench.world.render import pretraining_example, vocabulary
from vlmbench.world.tokenizer import PAD_ID, SOT_ID, UNK_ID, WorldTokenizer


def test_vocabulary_is_small_and_eot_has_the_highest_id():
    tok = WorldTokenizer()
    assert 40 <= tok.vocab_size <= 130
    assert tok.vocab_size == len(vocabulary()) + 4
    assert tok.eot_id == tok.vocab_size - 1
    assert {PAD_ID, SOT_ID, UNK_ID} == {0, 1, 2}


def test_rows_are_sot_words_eot_then_padding_and_argmax_finds_eot():
    tok = WorldTokenizer()
    tokens = tok(["a red circle", "there are two small crosses on a dotted background"])
    assert tokens.dtype == torch.long and tokens.shape == (2, tok.context_length)
    for row, n_words in zip(tokens, (3, 9)):
        assert row[0] == SOT_ID and row[n_words + 1] == tok.eot_id
        assert (row[1 : n_words + 1] > UNK_ID).all() and (row[1 : n_words + 1] < tok.eot_id).all()
        assert (row[n_words + 2 :] == PAD_ID).all()
        assert int(row.argmax()) == n_words + 1  # where open_clip pools the text features


def test_case_punctuation_and_unknown_words():
    tok = WorldTokenizer()
    assert torch.equal(tok("A RED, circle."), tok("a red circle"))
    assert tok("a single string").shape == (1, tok.context_length)
    row = tok(["a purple zebra"])[0]
    assert row[3] == UNK_ID and row[4] == tok.eot_id
    assert tok.encode("zebra 42 giraffe") == [UNK_ID, UNK_ID]


def test_long_texts_are_cut_but_keep_eot_last():
    tok = WorldTokenizer(context_length=6)
    row = tok("a photo of four large red circles on a plain background")[0]
    assert row.tolist()[-1] == tok.eot_id and (row != PAD_ID).all()


def test_every_caption_and_prompt_is_known_and_fits():
    tok = WorldTokenizer()
    texts = [pretraining_example(i, 0)[1] for i in range(300)]
    for plugin in WORLD_DATASETS.values():
        texts += [template.format(name) for template in plugin.templates for name in plugin.classnames]
    tokens = tok(texts)
    assert not (tokens == UNK_ID).any()
    assert ((tokens == tok.eot_id).sum(dim=1) == 1).all()
    assert (tokens[:, -1] == PAD_ID).all()  # nothing was cut
