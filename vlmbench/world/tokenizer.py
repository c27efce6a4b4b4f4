"""Word-level tokenizer of the world's vocabulary, compatible with open_clip's text tower.

Ids: ``0`` pad, ``1`` start-of-text, ``2`` unknown word, then the words of
:func:`vlmbench.world.render.vocabulary` in sorted order, and end-of-text last with the highest id
(open_clip pools the text features at ``argmax`` of the token ids, i.e. at end-of-text).
"""

from __future__ import annotations

import re

import torch

from vlmbench.world.render import vocabulary

PAD_ID, SOT_ID, UNK_ID = 0, 1, 2
_SPECIALS = 3


class WorldTokenizer:
    """Lower-cases, splits on non-letters, maps words to ids (unknown words to ``UNK_ID``).

    ``tokenizer(texts)`` returns a ``torch.long`` tensor ``(N, context_length)``: start-of-text, the
    word ids, end-of-text, then padding (zeros). A text longer than the context is cut so that its
    last token is still end-of-text.

    Attributes:
        words: the vocabulary, index ``i`` has id ``i + 3``.
        vocab_size: number of ids (``len(words) + 4``).
        context_length: length of every row.
        eot_id: end-of-text id, ``vocab_size - 1``.
    """

    def __init__(self, context_length: int = 20) -> None:
        if context_length < 2:
            raise ValueError("context_length must leave room for start- and end-of-text")
        self.words: tuple[str, ...] = vocabulary()
        self._ids = {word: i + _SPECIALS for i, word in enumerate(self.words)}
        self.vocab_size = len(self.words) + _SPECIALS + 1
        self.eot_id = self.vocab_size - 1
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text``, without start/end-of-text."""
        return [self._ids.get(word, UNK_ID) for word in re.findall(r"[a-z]+", text.lower())]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        tokens = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text)][: self.context_length - 1] + [self.eot_id]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens
