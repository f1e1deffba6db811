"""Counts in sentences: ``1 issuer``, ``2 issuers``, ``1 entry``, ``0 entries`` (what operators read)."""

from __future__ import annotations


def noun(count: int, singular: str, many: str | None = None) -> str:
    """``singular`` unless ``count`` is not 1: then ``many`` when given, else the regular English plural
    (entry → entries, mismatch → mismatches, issuer → issuers)."""
    if count == 1:
        return singular
    if many is not None:
        return many
    if singular.endswith("y") and singular[-2:-1] not in "aeiou":
        return singular[:-1] + "ies"
    if singular.endswith(("s", "x", "z", "ch", "sh")):
        return singular + "es"
    return singular + "s"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``count`` and its noun: ``plural(1, "entry")`` is ``1 entry``, ``plural(3, "entry")`` ``3 entries``."""
    return f"{count} {noun(count, singular, many)}"
