"""Mutations of valid inputs, for fuzzing: what a broken client, a proxy or an attacker sends."""

from __future__ import annotations

import random


def mutate(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    """``data`` with a few structural accidents: flipped bits, bytes set to edge values, cut, grown,
    spliced, lengths of DER headers changed."""
    out = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        if not out:
            out = bytearray(rng.randbytes(rng.randint(1, 8)))
        i = rng.randrange(len(out))
        op = rng.randrange(8)
        if op == 0:
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[i] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF))
        elif op == 2:
            del out[i:i + rng.randint(1, 16)]
        elif op == 3:
            out[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            j = rng.randrange(len(out))
            out[i:i] = out[j:j + rng.randint(1, 32)]
        elif op == 5:
            del out[i:]
        elif op == 6 and i + 1 < len(out):  # a DER length: long form, huge, or zero
            out[i + 1] = rng.choice((0x80, 0x84, 0xFF, 0x00, 0x81))
        else:
            out[i] = rng.randrange(256)
    return bytes(out)
