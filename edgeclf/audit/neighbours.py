"""Pairs of near images without an N x N matrix: rows are compared block by block against the rest.

Hamming distances of 64-bit hashes cost one XOR and one popcount each, so even 100,000 images
(5e9 pairs) take seconds per block row; memory is bounded by BLOCK_ELEMENTS whatever N is.
Embeddings are compared the same way, by cosine similarity, keeping only pairs above a floor.
"""
from __future__ import annotations

import numpy as np

BLOCK_ELEMENTS = 1 << 23  # pairs compared at once: 8 M, about 200 MB of temporaries at most
MAX_NEIGHBOURS = 16  # embedding pairs kept per image: a group larger than this is still joined through its members


def _blocks(n: int, width: int):
    rows = max(1, BLOCK_ELEMENTS // max(1, width))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def hash_pairs(hashes: np.ndarray, dhash_max: int, phash_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, dhash distance, phash distance) for i < j whose hashes are both within bounds, in the
    orientation (as is, or mirrored) that brings them nearest.

    `hashes` is (N, 4) uint64: dhash, dhash of the mirror, phash, phash of the mirror.
    """
    n = len(hashes)
    found = ([], [], [], [])
    for start, stop in _blocks(n, n):
        block = hashes[start:stop]
        rest = hashes[start:]  # only j >= the block's first row: each pair once
        plain_d = np.bitwise_count(block[:, None, 0] ^ rest[None, :, 0])
        plain_p = np.bitwise_count(block[:, None, 2] ^ rest[None, :, 2])
        mirror_d = np.bitwise_count(block[:, None, 0] ^ rest[None, :, 1])
        mirror_p = np.bitwise_count(block[:, None, 2] ^ rest[None, :, 3])
        mirrored = mirror_d.astype(np.int16) + mirror_p < plain_d.astype(np.int16) + plain_p
        d = np.where(mirrored, mirror_d, plain_d)
        p = np.where(mirrored, mirror_p, plain_p)
        ii, jj = np.nonzero((d <= dhash_max) & (p <= phash_max))
        jj = jj + start
        ii = ii + start
        upper = jj > ii
        for out, values in zip(found, (ii[upper], jj[upper], d[ii[upper] - start, jj[upper] - start],
                                       p[ii[upper] - start, jj[upper] - start])):
            out.append(values)
    return tuple(np.concatenate(part).astype(np.int64) if part else np.zeros(0, np.int64) for part in found)


def pair_hash_distance(hashes: np.ndarray, ii: np.ndarray, jj: np.ndarray) -> np.ndarray:
    """dhash + phash distance of each pair (ii[k], jj[k]), in the nearer orientation, as hash_pairs counts it."""
    a, b = hashes[ii], hashes[jj]
    plain = np.bitwise_count(a[:, 0] ^ b[:, 0]).astype(np.int16) + np.bitwise_count(a[:, 2] ^ b[:, 2])
    mirror = np.bitwise_count(a[:, 0] ^ b[:, 1]).astype(np.int16) + np.bitwise_count(a[:, 2] ^ b[:, 3])
    return np.minimum(plain, mirror)


def cosine_pairs(features: np.ndarray, floor: float, most: int = MAX_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) for i < j with cosine >= floor, at most `most` per i (its nearest); `features`
    rows are L2-normalised (a memmap will do). The cap keeps memory at O(N) even where features
    barely differ (random weights, one scene shot a thousand times)."""
    n = len(features)
    found = ([], [], [])
    for start, stop in _blocks(n, n):
        block = np.asarray(features[start:stop], np.float32)
        sims = block @ np.asarray(features[start:], np.float32).T
        rows = np.arange(stop - start)[:, None]
        sims[np.arange(sims.shape[1])[None, :] <= rows] = -np.inf  # only j > i (columns count from `start`)
        k = min(most, sims.shape[1])
        jj = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(sims, jj, axis=1)
        ii, kept = np.nonzero(best >= floor)
        found[0].append(ii + start)
        found[1].append(jj[ii, kept] + start)
        found[2].append(best[ii, kept])
    return (np.concatenate(found[0]).astype(np.int64), np.concatenate(found[1]).astype(np.int64),
            np.concatenate(found[2]).astype(np.float32)) if n else (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
