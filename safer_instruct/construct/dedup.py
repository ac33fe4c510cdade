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
from collections import defaultdict
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


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _hash32(gram: str) -> int:
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=4).digest(), "little")


class MinHasher:
    """MinHash signatures with `num_perm` seeded permutations (same seed, same signatures)."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
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


class NearDuplicateIndex:
    """An index of texts that answers: is this text an exact or near duplicate of one seen before?

    Args:
        threshold: estimated Jaccard similarity of character 5-gram sets at or above which two
            texts are near duplicates (0.8 catches rewordings of a word or two).
        num_perm: MinHash permutations; bands * rows must equal it.
        bands: LSH bands (more bands: more candidates checked, fewer misses).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, bands: int = 32, seed: int = 1):
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.hasher = MinHasher(num_perm=num_perm, seed=seed)
        self.bands, self.rows = bands, num_perm // bands
        self._exact: dict[str, Hashable] = {}
        self._buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]
        self._signatures: list[np.ndarray] = []
        self._keys: list[Hashable] = []

    def __len__(self) -> int:
        return len(self._keys)

    def exact_match(self, text: str) -> Hashable | None:
        return self._exact.get(normalize(text))

    def near_match(self, text: str, signature: np.ndarray | None = None) -> tuple[Hashable, float] | None:
        """The most similar indexed key at or over the threshold, with its estimated similarity."""
        signature = self.hasher.signature(text) if signature is None else signature
        candidates: set[int] = set()
        for band, buckets in enumerate(self._buckets):
            candidates.update(buckets.get(self._band_key(signature, band), ()))
        best: tuple[Hashable, float] | None = None
        for index in sorted(candidates):
            similarity = float(np.mean(self._signatures[index] == signature))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (self._keys[index], similarity)
        return best

    def add(self, key: Hashable, text: str, signature: np.ndarray | None = None) -> None:
        signature = self.hasher.signature(text) if signature is None else signature
        self._exact.setdefault(normalize(text), key)
        index = len(self._keys)
        self._keys.append(key)
        self._signatures.append(signature)
        for band, buckets in enumerate(self._buckets):
            buckets[self._band_key(signature, band)].append(index)

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

    def _band_key(self, signature: np.ndarray, band: int) -> bytes:
        return signature[band * self.rows : (band + 1) * self.rows].tobytes()


def build_index(texts: Iterable[tuple[Hashable, str]], threshold: float = 0.8) -> NearDuplicateIndex:
    """An index over (key, text) pairs, e.g. an evaluation prompt set for the leakage guard."""
    index = NearDuplicateIndex(threshold=threshold)
    for key, text in texts:
        if normalize(text):
            index.add(key, text)
    return index
