"""Corrupted copies of a real model, for robustness tests and benchmarks/model_mutants.py."""

from __future__ import annotations

import numpy as np

#: Words a corrupted or hostile file tends to hold: -1, huge sizes, zero.
_SPECIAL_WORDS = (0xFFFFFFFF, 0x7FFFFFFF, 0x40000000, 0x00000000, 0x0000FFFF)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutant: (kind, bytes). Kinds: truncate, bitflip, word (a 4-byte field overwritten)."""
    kind = str(rng.choice(["truncate", "bitflip", "word"]))
    buf = bytearray(data)
    if kind == "truncate":
        return kind, bytes(buf[: int(rng.integers(0, len(buf)))])
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(0, len(buf)))
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(buf)
    pos = int(rng.integers(0, len(buf) // 4)) * 4  # flatbuffer fields are 4-byte aligned
    word = int(rng.choice(_SPECIAL_WORDS)) if rng.random() < 0.7 else int(rng.integers(0, 2**32))
    buf[pos : pos + 4] = word.to_bytes(4, "little")
    return kind, bytes(buf)
