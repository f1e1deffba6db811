"""``annuaire ldap export --ldif``: the whole directory as the sync would write it, for ``slapadd -q``.

The initial load of a large registry into an empty directory, OpenLDAP's own bulk path (an offline
``slapadd`` skips the protocol, the per-operation transactions and the index updates one entry at a time).
There is no second projection: the entries come from what a full pass uses (``DesiredState``: each
certificate's stored projection for the layout, the CA entries with the published CRLs, ``containers``,
``skeleton``), and each is written as the very ``Add`` the sync would send, through the functions
``diff.plan(want, None)`` and ``writer.operations`` build it with (``add_attributes``, ``add_values``),
as an LDIF record (``ldif``). Memory is bounded whatever the registry's size: the entries' rows, with their
certificates' bytes, are read in pages ordered by entry.

Cost (200,000 certificates, 325 MB): the export must stay well below slapadd's own CPU time, or it, not
slapadd, sets the pace of ``export | slapadd -q``. Hence no per-entry ``Plan``/``Add`` objects, one JSON
document per page, records handed to the writer's buffer, and the cyclic collector paused (bench/ldif.py).

Order: the suffix, the branches (and the service's bind entry, when asked), the CA entries, the
intermediate entries (parents first), then every end entity. slapadd adds the operational attributes
itself (entryUUID, entryCSN, creatorsName, createTimestamp, ...; -q included), so none are written: the
same file also loads with ``ldapadd``.

``mark`` records the export as what the directory holds (the bulk-load procedure, deploy/README.md): the
outbox rows it covers are settled and the layout marked as synced, so the next incremental pass starts
from the export; the worker's start-up full pass then reads every entry and finds nothing to write.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import groupby
from operator import itemgetter
from typing import BinaryIO

from directory.config import Config
from directory.ldap import containers, dn, ldif, skeleton
from directory.ldap.client import Add
from directory.ldap.desired import DesiredState, entry_from_rows
from directory.ldap.diff import add_attributes
from directory.ldap.projection import DesiredEntry, Layout
from directory.ldap.writer import add_values
from directory.registry.store import Registry
from directory.version import version

PAGE = 2000  # registry rows per page (and entries per write)
PublishedRow = tuple[str, str, str, int, str, int, bytes]  # a ``Row``, then the certificate's bytes
_KEY = itemgetter(0)  # a row's entry: its dn_key


@dataclass
class ExportReport:
    layout: str = ""
    at: int = 0  # the registry's state exported: good and unexpired at this time
    outbox_top: int = 0  # the outbox rows the export covers (ids up to this one)
    entries: int = 0
    end_entities: int = 0
    certificates: int = 0
    ca_entries: int = 0
    intermediate: int = 0
    unpublishable: int = 0  # certificates no DN template places (not in the export, as not in the sync)
    bytes: int = 0
    marked: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


class LdifExport:
    """One export of the registry's directory for ``config``'s layout."""

    def __init__(self, config: Config, registry: Registry, clock: Callable[[], float] = time.time) -> None:
        if config.ldap is None:
            raise ValueError("no [ldap] section in the configuration")
        self.config = config
        self.registry = registry
        self.clock = clock
        self.layout = Layout.from_config(config.ldap)
        self.desired = DesiredState(config, registry, self.layout)

    def write(self, out: BinaryIO, suffix: bool = True, bind_entry: Add | None = None,
              progress: Callable[[int], None] | None = None) -> ExportReport:
        """Write every entry to ``out``. ``suffix``: False when the suffix entry is loaded otherwise
        (deploy/slapd/seed.ldif); ``bind_entry``: the service's own entry, written after the branches."""
        collecting = gc.isenabled()
        gc.disable()  # a page's objects form no cycles: counting frees them, a collector would re-scan them
        try:
            return self._write(out, suffix, bind_entry, progress)
        finally:
            if collecting:
                gc.enable()

    def _write(self, out: BinaryIO, suffix: bool, bind_entry: Add | None,
               progress: Callable[[int], None] | None) -> ExportReport:
        started = time.monotonic()
        now = int(self.clock())
        report = ExportReport(layout=self.layout.digest, at=now)
        _, report.outbox_top, _ = self.registry.ldap_outbox_stats()  # before reading: later rows stay due
        self.desired.project_all(store=True)  # as a full pass: certificates the layout has not placed yet
        report.unpublishable = self.registry.ldap_unplaced(self.layout.digest, now)

        def emit(records: Iterable[bytes]) -> None:
            write, size, count = out.write, 0, 0
            for record in records:  # each into the writer's buffer as made: the output flows, page or not
                write(record)
                size += len(record)
                count += 1
            report.bytes += size
            report.entries += count

        header = ldif.comment(f"annuaire {version()} ldap export: layout {report.layout}, registry state at "
                              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}, outbox up to "
                              f"{report.outbox_top}\nfor slapadd -q into an empty database "
                              "(deploy/README.md, bulk directory load)")
        out.write(header.encode("ascii", "replace"))
        first = skeleton.skeleton(self.layout)[0 if suffix else 1:] + ([bind_entry] if bind_entry else [])
        emit([ldif.record(a.dn, a.attributes) for a in first])
        cas = list(self.desired.ca_entries().values())
        report.ca_entries = len(cas)
        emit(_records(cas, {}))
        if self.layout.has_containers:  # a first pass over the DNs only: nodes come before their entries
            nodes = containers.above(self.layout, (row[1] for page in self._pages(now) for row in page))
            ordered = sorted(nodes.values(), key=lambda e: len(dn.parse(e.dn)))
            report.intermediate = len(ordered)
            emit(_records(ordered, {}))
        for rows in self._entries(now):
            groups = [list(group) for _, group in groupby(rows, _KEY)]
            emit(_records(_desired(groups), {row[3]: row[6] for row in rows}))
            report.end_entities += len(groups)
            report.certificates += len(rows)
            if progress is not None:
                progress(report.entries)
        report.seconds = time.monotonic() - started
        return report

    def mark(self, report: ExportReport) -> None:
        """Record the export as the directory's state (it was, or is about to be, loaded as is)."""
        self.registry.ldap_outbox_settle(self.layout.digest, report.at, up_to=report.outbox_top)
        report.marked = True
        self.registry.state_set({"layout": self.layout.digest, "expired_checked": str(report.at),
                                 "last_export": json.dumps(report.as_dict())})

    def _pages(self, now: int) -> Iterator[list[PublishedRow]]:
        after: tuple[str, int] | None = None
        while True:
            page = self.registry.ldap_published_page(self.layout.digest, now, after, PAGE)
            if not page:
                return
            yield page
            after = (page[-1][0], page[-1][3])

    def _entries(self, now: int) -> Iterator[list[PublishedRow]]:
        """The end entities' rows a page at a time, whole entries only: an entry whose rows straddle two
        pages waits for the next."""
        held: list[PublishedRow] = []
        for page in self._pages(now):
            rows = held + page if held else page
            cut = len(rows)
            while cut and rows[cut - 1][0] == rows[-1][0]:
                cut -= 1
            held = rows[cut:]
            if cut:
                yield rows[:cut]
        if held:
            yield held


def _desired(groups: list[list[PublishedRow]]) -> list[DesiredEntry]:
    """Each entry's desired state from its rows (``entry_from_rows``, as a full pass), the first rows'
    attributes decoded in one JSON document for the whole page (each is a stored ``json.dumps`` object)."""
    firsts = [group[0][2] for group in groups]
    decoded = json.loads("[" + ",".join(firsts) + "]")
    if len(decoded) != len(groups):  # not one object each: decoded one by one (the faulty one raises)
        decoded = [json.loads(text) for text in firsts]
    # a PublishedRow is a Row with the bytes last: entry_from_rows reads the first six fields only
    return [entry_from_rows(group, first)  # type: ignore[arg-type]
            for group, first in zip(groups, decoded, strict=True)]


def _records(entries: list[DesiredEntry], ders: dict[int, bytes]) -> Iterator[bytes]:
    """The LDIF records of the adds the sync would send for ``entries`` into an empty directory:
    ``plan(e, None)`` then ``operations`` (the same ``add_attributes`` and ``add_values``), without their
    objects; one at a time (a page's records made at once would leave the reader waiting meanwhile)."""
    record = ldif.record
    return (record(e.dn, add_values(add_attributes(e), [ders[c] for c in e.certificates.values() if c in ders]))
            for e in entries)
