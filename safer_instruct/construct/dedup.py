"""Exact and near-duplicate detection for short texts (instructions, prompts).

Texts are normalised (case, punctuation, whitespace), cut into character 5-grams, and summarised by
a MinHash signature; locality-sensitive hashing over bands of the signature finds candidate pairs,
and a candidate counts as a near duplicate when the estimated Jaccard similarity of the two n-gram
sets reaches the threshold. Character n-grams rather than word n-grams because instructions are
short: one changed word in a ten-word instruction breaks a third of its word trigrams, but few of
its character 5-grams.

Memory per indexed text is one signature (num_perm 32-bit integers), so an index over a large
corpus stays small.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Hashable, Iterable

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)


def normalize(text: str) -> str:
    """Lower case, accents folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", text.lower()).strip()


def char_ngrams(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the normalised text (the whole text if it is shorter than n)."""
    norm = normalize(text)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def _hash32(gram: str) -> int:
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=4).digest(), "little")


class MinHasher:
    """MinHash signatures with `num_perm` seeded permutations (same seed, same signatures)."""

    def __init__(self, num_perm: int = 120, ngram: int = 5, seed: int = 1):
        rng = np.random.RandomState(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = rng.randint(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        grams = char_ngrams(text, self.ngram)
        if not grams:
            return np.zeros(self.num_perm, dtype=np.uint32)
        hashes = np.fromiter((_hash32(g) for g in grams), dtype=np.uint64, count=len(grams))
        # Multiplication may wrap around 2**64; that only permutes differently, all texts alike.
        with np.errstate(over="ignore"):
            permuted = (np.outer(hashes, self.a) + self.b) % _MERSENNE & _MAX_HASH
        return permuted.min(axis=0).astype(np.uint32)


def lsh_bands(threshold: float, num_perm: int = 120, recall: float = 0.99) -> int:
    """The number of bands whose rows per band are the most (fewest false candidates) while a pair
    at exactly `threshold` still shares a band with probability >= `recall`."""
    for rows in sorted((r for r in range(1, num_perm + 1) if num_perm % r == 0), reverse=True):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands
    return num_perm


class _BandTable:
    """band hash -> item indices for one LSH band, in compact form.

    Most entries live in a sorted numpy array (12 bytes each); new ones go to a small dict that is
    merged into the array every `merge_every` additions. A dict of Python objects per entry would
    cost a few hundred bytes each, i.e. gigabytes for a corpus of millions of texts.
    """

    def __init__(self, merge_every: int = 4096):
        self.keys = np.empty(0, dtype=np.uint64)
        self.values = np.empty(0, dtype=np.int64)
        self.buffer: dict[int, list[int]] = {}
        self.buffered = 0
        self.merge_every = merge_every

    def get(self, key: int) -> list:
        """Index arrays (and lists) of the items whose band hashes to `key`."""
        found: list = []
        if key in self.buffer:
            found.append(self.buffer[key])
        if len(self.keys):
            lo, hi = np.searchsorted(self.keys, np.uint64(key), "left"), np.searchsorted(self.keys, np.uint64(key), "right")
            if hi > lo:
                found.append(self.values[lo:hi])
        return found

    def add(self, key: int, value: int) -> None:
        self.buffer.setdefault(key, []).append(value)
        self.buffered += 1
        if self.buffered >= self.merge_every:
            self.merge()

    def merge(self) -> None:
        if not self.buffered:
            return
        new_keys = np.fromiter((k for k, vs in self.buffer.items() for _ in vs), dtype=np.uint64, count=self.buffered)
        new_values = np.fromiter((v for vs in self.buffer.values() for v in vs), dtype=np.int64, count=self.buffered)
        keys, values = np.concatenate([self.keys, new_keys]), np.concatenate([self.values, new_values])
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]
        self.buffer, self.buffered = {}, 0


_MIX = np.uint64(0x9E3779B97F4A7C15)


class NearDuplicateIndex:
    """An index of texts that answers: is this text an exact or near duplicate of one seen before?

    Args:
        threshold: estimated Jaccard similarity of character 5-gram sets at or above which two
            texts are near duplicates (0.8 catches rewordings of a word or two).
        num_perm: MinHash permutations, cut into the most selective LSH bands that still find >= 99%
            of the pairs at the threshold (`lsh_bands`), so that texts that share only a template are
            rarely even compared.

    Memory per indexed text is about 1 KB (its signature, its band hashes, a hash of its normalised
    text and its key), so that an index over a large corpus stays small.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 120, seed: int = 1):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        bands = lsh_bands(threshold, num_perm)  # a divisor of num_perm
        self.threshold = threshold
        self.hasher = MinHasher(num_perm=num_perm, seed=seed)
        self.bands, self.rows = bands, num_perm // bands
        self._exact: dict[int, int] = {}  # hash of the normalised text -> item index
        self._tables = [_BandTable() for _ in range(bands)]
        self._signatures = np.empty((64, num_perm), dtype=np.uint32)
        self._keys: list[Hashable] = []

    def __len__(self) -> int:
        return len(self._keys)

    @staticmethod
    def _text_hash(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=8).digest(), "little")

    def _band_keys(self, signature: np.ndarray) -> list[int]:
        rows = signature.astype(np.uint64).reshape(self.bands, self.rows)
        with np.errstate(over="ignore"):
            mixed = np.zeros(self.bands, dtype=np.uint64)
            for column in range(self.rows):
                mixed = (mixed ^ rows[:, column]) * _MIX
        return mixed.tolist()

    def exact_match(self, text: str) -> Hashable | None:
        index = self._exact.get(self._text_hash(text))
        return None if index is None else self._keys[index]

    def near_match(self, text: str, signature: np.ndarray | None = None) -> tuple[Hashable, float] | None:
        """The most similar indexed key at or over the threshold, with its estimated similarity."""
        signature = self.hasher.signature(text) if signature is None else signature
        parts = [part for table, key in zip(self._tables, self._band_keys(signature), strict=True)
                 for part in table.get(key)]  # fmt: skip
        if not parts:
            return None
        indices = np.unique(np.concatenate([np.asarray(part, dtype=np.int64) for part in parts]))
        similarity = np.mean(self._signatures[indices] == signature, axis=1)
        best = int(np.argmax(similarity))  # the first of the most similar, in insertion order
        if similarity[best] < self.threshold:
            return None
        return self._keys[int(indices[best])], float(similarity[best])

    def add(self, key: Hashable, text: str, signature: np.ndarray | None = None) -> None:
        signature = self.hasher.signature(text) if signature is None else signature
        index = len(self._keys)
        self._exact.setdefault(self._text_hash(text), index)
        if index == len(self._signatures):  # full: double it
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[index] = signature
        self._keys.append(key)
        for table, band_key in zip(self._tables, self._band_keys(signature), strict=True):
            table.add(band_key, index)

    def check_and_add(self, key: Hashable, text: str) -> tuple[str, Hashable | None]:
        """("unique", None), ("duplicate", first_key) or ("near_duplicate", first_key); unique texts are added."""
        first = self.exact_match(text)
        if first is not None:
            return "duplicate", first
        signature = self.hasher.signature(text)
        near = self.near_match(text, signature)
        if near is not None:
            return "near_duplicate", near[0]
        self.add(key, text, signature)
        return "unique", None


def build_index(texts: Iterable[tuple[Hashable, str]], threshold: float = 0.8) -> NearDuplicateIndex:
    """An index over (key, text) pairs, e.g. an evaluation prompt set for the leakage guard."""
    index = NearDuplicateIndex(threshold=threshold)
    for key, text in texts:
        if normalize(text):
            index.add(key, text)
    return index
