"""The seeded random numbers every generated value is drawn from.

A value's rng is seeded by its item's content key and the value's path in the
schema (``label``, ``tags[0]``, ``address.city``), never by the item's id or
position, so a record gets the same answer alone, in a pack, in a batch and
in any order. The generator (splitmix64) and the seeding (blake2b) are part of
the emulator's pinned answers (tests/test_emulator_answers_golden.py): they
must never change.
"""
from __future__ import annotations

import hashlib
import struct

#: An empty blake2b state of 8-byte digests, copied to seed each value's rng.
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)
_BIG_ENDIAN_U64 = struct.Struct(">Q").unpack


def seed_state(seed: bytes) -> int:
    """The rng state for seed bytes: the content key + path_suffix(path)."""
    h = _BLAKE2B_8.copy()  # copying a fresh state is ~1.5x cheaper than making one
    h.update(seed)
    return _BIG_ENDIAN_U64(h.digest())[0]  # int.from_bytes(digest, "big"), cheaper


class Rng:
    """splitmix64 seeded by (content key, path): tiny, fast, stable forever."""

    __slots__ = ("s",)

    def __init__(self, seed: bytes):
        """seed: the content key + path_suffix(path) (a generator holds the suffix ready)."""
        self.s = seed_state(seed)

    def next64(self) -> int:
        # The masks are literals (2**64 - 1): a constant loads faster than a global.
        z = self.s = (self.s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self.next64() >> 11) / 9007199254740992.0  # float(1 << 53)

    def below(self, n: int) -> int:
        if n <= 0:
            return 0
        # next64() inlined: below() is most of the draws of an answer
        z = self.s = (self.s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return (z ^ (z >> 31)) % n

    def between(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1) if hi >= lo else lo


#: An Rng without __init__ (generators set its state themselves).
new_rng = object.__new__


def path_suffix(path: str) -> bytes:
    """What follows the content key in the seed of the value at `path`."""
    return b"\x00" + path.encode("utf-8", "surrogatepass")
