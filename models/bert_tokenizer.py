"""A BERT WordPiece tokenizer in pure Python (standard library only): Hugging Face's
`BertTokenizer` with do_lower_case=True (text cleaning, CJK characters split out, lower case,
accents stripped, split on whitespace and punctuation, greedy longest-match-first WordPiece
with `##` continuations, [UNK] for a word it cannot cover or longer than 100 characters).
models/make_text.py checks it against the `tokenizers` library's reading of tokenizer.json
when that library is importable (`--verify-tokenizer`).

    tok = BertTokenizer("models/pretrained/minilm_tokenizer/vocab.txt")
    ids, mask = tok.encode("A gorgeous, witty film.", max_len=64)   # [CLS] ... [SEP] + padding
"""

from __future__ import annotations

import unicodedata
from pathlib import Path


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    if c in "\t\n\r":
        return False
    return unicodedata.category(c) in ("Cc", "Cf")


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class BertTokenizer:
    def __init__(self, vocab: Path | str, lower: bool = True):
        tokens = Path(vocab).read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.lower = lower
        self.unk, self.cls, self.sep, self.pad = (self.vocab[t] for t in
                                                  ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))

    def _basic(self, text: str) -> list[str]:
        chars = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or _is_control(c):
                continue
            if _is_whitespace(c):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.extend((" ", c, " "))
            else:
                chars.append(c)
        words = []
        for w in "".join(chars).split():
            if self.lower:
                w = w.lower()
                w = "".join(c for c in unicodedata.normalize("NFD", w)
                            if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if _is_punctuation(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        out, start = [], 0
        while start < len(word):
            end, piece = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    piece = self.vocab[sub]
                    break
                end -= 1
            if piece is None:
                return [self.unk]
            out.append(piece)
            start = end
        return out

    def tokenize(self, text: str) -> list[int]:
        """WordPiece ids of `text`, without [CLS]/[SEP]."""
        return [i for w in self._basic(text) for i in self._wordpiece(w)]

    def encode(self, text: str, max_len: int) -> tuple[list[int], list[int]]:
        """[CLS] ids [SEP], truncated to max_len and padded with [PAD]; and the attention mask."""
        ids = [self.cls] + self.tokenize(text)[:max_len - 2] + [self.sep]
        mask = [1] * len(ids)
        pad = max_len - len(ids)
        return ids + [self.pad] * pad, mask + [0] * pad
