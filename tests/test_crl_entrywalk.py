"""The self-check's entry walk by template (``directory.crl.entrywalk``): the same extension lists as a plain
walk of the DER, whatever the mix of shapes, and the same refusals of runs that are not whole entries."""

from __future__ import annotations

import random

import pytest

from directory import der
from directory.crl import entrywalk

AT = 1_790_000_000


def _plain(run: bytes) -> dict[bytes, int]:
    """The reference: each entry framed by its DER lengths, its extension list whatever follows the time."""
    seen: dict[bytes, int] = {}
    i = 0
    while i < len(run):
        first = run[i + 1]
        body = i + 2 + (first & 0x7F if first >= 0x80 else 0)
        end = body + (int.from_bytes(run[i + 2:body], "big") if first >= 0x80 else first)
        j = body + 2 + run[body + 1]
        j += 2 + run[j + 1]
        if j < end:
            seen.setdefault(run[j:end], body)
        i = end
    return seen


def _entries(rnd: random.Random, n: int, invalidity: float = 0.0, bits: tuple[int, ...] = (128,)) -> list[bytes]:
    return [der.revoked_entry(rnd.getrandbits(rnd.choice(bits)) | 1, rnd.choice([AT, 2_600_000_000]) + n,
                              rnd.choice([0, 1, 1, 3, 4, 4, 5, 9]),
                              AT - rnd.randrange(10**6) if rnd.random() < invalidity else None)
            for n in range(n)]


def _check(runs: list[bytes], templates: entrywalk.Templates) -> None:
    for run in runs:
        found = entrywalk.walk(run, 0, len(run), templates)
        assert set(found) == set(_plain(run))
        for extensions, at in found.items():  # an entry carrying it: its serial at ``at``
            assert run[at] == 0x02 and run[at - 2] == 0x30 and run[at:at + run[at - 1]].endswith(extensions)


@pytest.mark.parametrize(("invalidity", "bits"), [(0.0, (128,)), (0.0, (8, 64, 128, 159)), (0.02, (128,)),
                                                   (0.6, (64, 159))])
def test_the_walk_finds_the_extension_lists_a_plain_walk_finds(invalidity: float, bits: tuple[int, ...]) -> None:
    rnd = random.Random(f"{invalidity}{bits}")
    entries = _entries(rnd, 6000, invalidity, bits)
    runs = [b"".join(entries[k:k + 1500]) for k in range(0, len(entries), 1500)]
    templates = entrywalk.Templates()
    _check(runs, templates)
    _check(runs, templates)  # again with every shape known: a run's lists, not those of the runs before it
    _check([b"".join(entries[:3])], templates)


def test_more_shapes_than_templates_and_entries_in_long_form_are_walked_too() -> None:
    rnd = random.Random(7)
    entries = _entries(rnd, 3000, 0.3, (8, 16, 32, 64, 96, 128, 159))
    long_form = b"\x30\x81" + der.revoked_entry(5, AT, 4)[1:]  # a needless long length: still framed right
    entries[10:10] = [long_form, der.revoked_entry(6, AT, None)]
    run = b"".join(entries)
    templates = entrywalk.Templates()
    _check([run, run], templates)
    assert entrywalk.MAX_SHAPES >= len(templates._shapes) > 1


def test_a_run_that_is_not_whole_entries_is_refused() -> None:
    run = b"".join(der.revoked_entry(n, AT, 1) for n in range(1, 400))
    templates = entrywalk.Templates()
    entrywalk.walk(run, 0, len(run), templates)
    for bad in (run[:-1], run + b"\x30", run + b"\x30\x05\x02\x01\x01"):
        with pytest.raises(entrywalk.WalkProblem):
            entrywalk.walk(bad, 0, len(bad), templates)
    overrun = der.tlv(0x30, der.integer(9) + b"\x17\x20" + b"0" * 13)  # the time claims more than the entry
    with pytest.raises(entrywalk.WalkProblem):
        entrywalk.walk(run + overrun, 0, len(run) + len(overrun), templates)
    assert entrywalk.walk(run, 0, 0, templates) == {}


def test_a_run_of_one_shape_is_checked_whole_and_any_odd_entry_sends_it_to_the_walk() -> None:
    uniform = [der.revoked_entry(0x10000000 + n, AT, 4) for n in range(500)]
    odd_reason = der.revoked_entry(0x10000000 + 250, AT, 1)  # same length, another extension list
    odd_serial = der.revoked_entry(2**142 + 3, AT, None)  # same length: an 18-octet serial, no extensions
    assert len(odd_reason) == len(odd_serial) == len(uniform[0])
    templates = entrywalk.Templates()
    _check([b"".join(uniform)], templates)
    assert len(entrywalk.walk(b"".join(uniform), 0, len(b"".join(uniform)), templates)) == 1
    for odd in (odd_reason, odd_serial):
        for at in (0, 250, 499):
            entries = [*uniform[:at], odd, *uniform[at + 1:]]
            _check([b"".join(entries)], entrywalk.Templates())
            _check([b"".join(entries)], templates)
