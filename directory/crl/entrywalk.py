"""The self-check's walk over a run of CRL entries: the distinct extension lists it carries, matched by template.

Walked in Python, an entry costs ~0.3 µs (0.3 s at a million, most of a cold build). But one CA's entries come
in a few shapes: the entry's length, the serial's length, the time's tag and length, and the extension list's
exact bytes (a reason code each). Every length byte of an entry of a given shape is fixed, so the shape is a
regular expression (the serial and the time any bytes of their lengths, everything else literal) and a run
of known shapes is matched by ``re`` in C, one possessive repetition of a trie of the shapes (~0.07 µs an
entry). Each shape's branch ends in an empty group: after a match, the groups that took part are the shapes,
hence the extension lists, met (with where one of their entries ends).

A template fixes every length of its entry, so a match is the run's own DER tiling: the entries ``cryptography``
parses, each extension list exactly the bytes it reads. An entry of a shape not met yet stops the match; it
and the next few are walked in Python (their shapes learnt, at most ``MAX_SHAPES``: each distinct invalidity
date is a shape of its own) and the match resumes. A run of one shape only (sequential serials, one reason)
is recognised faster still, a column of bytes at a time (``_one_shape``: ~0.013 µs an entry).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

Shape = tuple[int, int, int, int, bytes]  # entry length byte, serial length, time tag, time length, extensions
MAX_SHAPES = 64  # beyond, entries of new shapes are walked in Python (a regex of bounded size)
FIRST = 256  # entries walked in Python before any template is known (the first run's shapes)
MAX_STRETCH = 256  # entries walked in Python at most between two matches (when matches stop early)
GOOD_MATCH = 256  # bytes: a match this long is worth trying again right after the next entry
_ANY = 256  # a template token: _ANY + n is any n bytes (the serial's value, the time's)


class WalkProblem(ValueError):
    """The run is not a list of whole entries."""


class _Matcher(NamedTuple):
    regex: re.Pattern[bytes]
    shapes: tuple[Shape, ...]  # by group number - 1


class Templates:
    """The entry shapes met so far and the regex matching runs of them (kept: a CA's shapes recur in every run
    and every build)."""

    def __init__(self) -> None:
        self._shapes: dict[Shape, None] = {}
        self._once: set[Shape] = set()  # shapes met once (each distinct invalidity date is a shape of its own)
        self._matcher: _Matcher | None = None

    def note(self, shape: Shape) -> None:
        """A shape walked in Python: a template from its second sighting (a recompiled regex costs ~50 µs a
        shape; a shape met once may well be the only one of its kind)."""
        if shape in self._shapes or len(self._shapes) >= MAX_SHAPES:
            return
        if shape not in self._once:
            if len(self._once) >= 4 * MAX_SHAPES:
                self._once.clear()
            self._once.add(shape)
            return
        self._once.discard(shape)
        self._shapes[shape] = None
        self._matcher = None

    def matcher(self) -> _Matcher | None:
        if self._matcher is None and self._shapes:
            self._matcher = _compile(self._shapes)
        return self._matcher


def _tokens(shape: Shape) -> list[int]:
    """The entry of ``shape`` as tokens: a byte (0-255) to match as it is, or ``_ANY`` + n for any n bytes."""
    length, serial, tag, time_length, extensions = shape
    return [0x30, length, 0x02, serial, _ANY + serial, tag, time_length, _ANY + time_length, *extensions]


def _compile(shapes: Iterable[Shape]) -> _Matcher:
    """``(?:shape1()|shape2()|...)*+`` with common prefixes shared (a trie: ``re`` tries the branches of an
    alternation in turn, rejecting one on its first byte), each shape's group closing its entries."""
    root: dict = {}
    for shape in shapes:
        node = root
        for token in _tokens(shape):
            node = node.setdefault(token, {})
        node[None] = shape
    by_group: list[Shape] = []

    def emit(node: dict) -> bytes:
        branches = []
        for token in sorted(node, key=lambda token: -1 if token is None else token):
            if token is None:  # a shape ends here: its group (numbered in the order of the pattern's text)
                by_group.append(node[None])
                branches.append(b"()")
            elif token >= _ANY:
                branches.append(b".{%d}" % (token - _ANY) + emit(node[token]))
            else:
                branches.append(re.escape(bytes((token,))) + emit(node[token]))
        return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"

    regex = re.compile(b"(?:" + emit(root) + b")*+", re.DOTALL)
    return _Matcher(regex, tuple(by_group))


def _one_shape(buf: bytes, i: int, end: int, shape: Shape) -> bool:
    """True when ``buf[i:end]`` is entries of ``shape`` only (a run of one serial length and one extension
    list: sequential serials, one reason), checked a column at a time in C: every literal byte of the
    template at its offset in every entry, the extension list's last bytes first (a reason code differs
    there). Every length byte being one of them, the entries are the run's DER tiling, as with the regex."""
    size = 2 + shape[0]
    count, rest = divmod(end - i, size)
    if rest or count < 2:
        return False
    offset, literals = 0, []
    for token in _tokens(shape):
        if token >= _ANY:
            offset += token - _ANY
        else:
            literals.append((offset, token))
            offset += 1
    return all(buf[i + at:end:size] == bytes((value,)) * count for at, value in reversed(literals))


def shape_at(buf: bytes, i: int) -> Shape | None:
    """The shape of the entry at ``i`` when every length in it is short (every entry this service writes)."""
    length, serial = buf[i + 1], buf[i + 3]
    if buf[i] != 0x30 or length >= 0x80 or buf[i + 2] != 0x02 or serial >= 0x80:
        return None
    j = i + 4 + serial
    time_length = buf[j + 1]
    k, end = j + 2 + time_length, i + 2 + length
    if time_length >= 0x80 or k > end:
        return None
    return length, serial, buf[j], time_length, buf[k:end]


def _long_entry(buf: bytes, i: int) -> tuple[bytes, int, int]:
    """(extension list, its serial's offset, end) of an entry with a long length somewhere (never written
    here; read as DER is)."""
    first = buf[i + 1]
    if first < 0x80:
        body, end = i + 2, i + 2 + first
    else:
        count = first & 0x7F
        body = i + 2 + count
        end = body + int.from_bytes(buf[i + 2:body], "big")
    j = body + 4 + buf[body + 1]  # past the serial (at most 21 octets: a short length) and the time's tag
    j += buf[j - 1]  # past revocationDate
    if j > end:
        raise WalkProblem("an entry overruns its own length")
    return buf[j:end], body, end


def _python(buf: bytes, i: int, end: int, count: int, seen: dict[bytes, int],
            templates: Templates | None = None) -> int:
    """Walk up to ``count`` entries from ``i`` in Python (~0.3 µs an entry), noting their shapes in
    ``templates`` when given."""
    first_at = seen.setdefault
    for _ in range(count):
        if i >= end:
            break
        if templates is not None and (shape := shape_at(buf, i)) is not None:
            templates.note(shape)
        length = buf[i + 1]
        if length < 0x80:
            body = i + 2
            following = body + length
        else:
            _, body, following = _long_entry(buf, i)
        j = body + 4 + buf[body + 1]  # past the serial (at most 21 octets: a short length) and the time's tag
        j += buf[j - 1]  # past revocationDate
        if j < following:
            first_at(buf[j:following], body)
        elif j > following:
            raise WalkProblem("an entry overruns its own length")
        i = following
    return i


def walk(buf: bytes, i: int, end: int, templates: Templates) -> dict[bytes, int]:
    """{extension list DER: offset of the serial of an entry carrying it} of the entries in ``buf[i:end]``
    (entries without extensions have none); ``WalkProblem`` unless they are whole entries ending at ``end``.

    Matches and walks alternate: the entry that stops a match is walked in Python (its shape noted), and
    ``stretch`` - 1 more with it, a stretch that doubles while matches stop early (entries of many shapes)."""
    seen: dict[bytes, int] = {}
    stretch = 0
    try:
        if i < end and (first := shape_at(buf, i)) is not None and _one_shape(buf, i, end, first):
            return {first[4]: i + 2} if first[4] else {}
        while i < end:
            matcher = templates.matcher()
            if matcher is None or stretch:  # while no template is known, the first entries are all noted
                noted = FIRST if matcher is None else 1
                i = _python(buf, i, end, noted, seen, templates)
                i = _python(buf, i, end, stretch - noted, seen)
                matcher = templates.matcher()
                if i >= end or matcher is None:
                    continue
            found = matcher.regex.match(buf, i, end)
            assert found is not None  # a repetition: matches, if only nothing
            for (closed, _), shape in zip(found.regs[1:], matcher.shapes, strict=True):
                if closed >= 0 and shape[4]:
                    seen.setdefault(shape[4], closed - shape[0])
            stretch = 1 if found.end() - i >= GOOD_MATCH else min(2 * stretch or 1, MAX_STRETCH)
            i = found.end()
    except IndexError:
        raise WalkProblem("the last entry overruns the list") from None
    if i != end:
        raise WalkProblem("the last entry overruns the list")
    return seen
