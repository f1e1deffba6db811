"""What the directory should hold, computed from the registry: desired state = f(registry, layout).

Each certificate is projected once per layout (DN and attributes, ``projection.project``) and the result
kept in the registry (``ldap_projection``); an end-entity entry is the merge of the rows of the good,
unexpired certificates projected onto its DN; a CA entry carries the issuer's certificate and the CRLs
published in ``data/crl/``. The sync (``sync.DirectorySync``) diffs these against what the directory holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from directory.config import Config
from directory.crl.files import read_regular
from directory.ldap import dn
from directory.ldap.projection import NOT_PUBLISHED, DesiredEntry, Layout, ca_entry, omitted_text, project
from directory.publication import crl_dir, delta_crl_name, full_crl_name
from directory.registry.store import Registry

log = logging.getLogger(__name__)
CHUNK = 2000  # certificates projected per registry round trip

Row = tuple[str, str, str, int, str, int]  # dn_key, dn, attributes JSON, certificate id, sha256, not_before
Projection = tuple[str | None, str | None, str | None]  # dn_key, dn, attributes JSON (None: not placed)


class DesiredState:
    """The desired entries of one layout, read (and projected when needed) from the registry."""

    def __init__(self, config: Config, registry: Registry, layout: Layout) -> None:
        self.config = config
        self.registry = registry
        self.layout = layout
        self.unplaced: set[int] = set()  # certificates of the last projection no template could place

    # -- projection ----------------------------------------------------------------------------------
    def project_all(self, store: bool) -> dict[int, Projection]:
        """Project every certificate not yet projected for this layout; returned (kept in memory) only when
        not stored."""
        return self._project(self.registry.ldap_unprojected(self.layout.digest), store)

    def project_some(self, certificate_ids: list[int]) -> None:
        self._project(self.registry.ldap_unprojected(self.layout.digest, certificate_ids), True)

    def _project(self, ids: list[int], store: bool) -> dict[int, Projection]:
        out: dict[int, Projection] = {}
        self.unplaced = set()
        for start in range(0, len(ids), CHUNK):
            rows = []
            for cid, der, profile, emails in self.registry.projection_inputs(ids[start:start + CHUNK]):
                try:
                    p = project(der, profile, [e for e in emails.split("\n") if e], self.layout)
                except ValueError as exc:
                    log.error("certificate id %d cannot be projected onto the directory: %s", cid, exc)
                    p = None
                if p is not None and p.omitted:
                    log.warning("certificate id %d: values left out of %s (the directory would refuse them): %s",
                                cid, p.dn, omitted_text(p.omitted))
                if p is None and profile not in NOT_PUBLISHED:
                    self.unplaced.add(cid)
                row = (cid, p.dn_key, p.dn, json.dumps(p.attributes)) if p else (cid, None, None, None)
                rows.append(row)
                if not store:  # stored: read back from the registry (a large registry stays out of memory)
                    out[cid] = row[1:]
            if store:
                self.registry.ldap_project(self.layout.digest, rows)
        return out

    # -- end-entity entries --------------------------------------------------------------------------
    def rows(self, now: int, extra: dict[int, Projection]) -> dict[str, list[Row]]:
        """Every end-entity entry's registry rows (certificates and their projected attributes), by key."""
        return self._rows_by_key(self.registry.ldap_published(self.layout.digest, now), extra, now)

    def entries(self, now: int, keys: list[str]) -> dict[str, DesiredEntry]:
        rows = self._rows_by_key(self.registry.ldap_published(self.layout.digest, now, keys), {}, now)
        return {key: entry_from_rows(r) for key, r in rows.items()}

    def _rows_by_key(self, rows: Iterator[Row], extra: dict[int, Projection], now: int) -> dict[str, list[Row]]:
        by_key: dict[str, list[Row]] = {}
        for row in rows:
            found = by_key.get(row[0])
            if found is None:
                by_key[row[0]] = [row]
            else:
                found.append(row)
        # verify: projections computed in memory, joined with the certificates' state here
        for cid, (key, entry_dn, attrs) in extra.items():
            if key is None:
                continue
            record = self.registry.published_state(cid, now)
            if record is not None:
                by_key.setdefault(key, []).append((key, entry_dn or "", attrs or "{}", cid, record[0], record[1]))
        return by_key

    def projected_dns(self, keys: set[str]) -> list[tuple[str, str]]:
        """(key, DN) of entries as they were projected: entries that must go are read under those DNs."""
        return self.registry.ldap_projected_dns(self.layout.digest, sorted(keys))

    # -- CA entries ----------------------------------------------------------------------------------
    def ca_entries(self) -> dict[str, DesiredEntry]:
        """Every configured issuer's entry (one registry query: it scans the certificates for CA ones)."""
        out = {}
        for issuer in self.registry.issuer_certificates():
            entry = self._ca_entry(*issuer)
            if entry is not None:
                out[dn.key(entry.dn)] = entry
        return out

    def ca_entry(self, issuer: str) -> DesiredEntry | None:
        return next((self._ca_entry(*i) for i in self.registry.issuer_certificates() if i[0] == issuer), None)

    def _ca_entry(self, name: str, certificate: bytes, is_arl: bool) -> DesiredEntry | None:
        try:
            settings = self.config.issuer(name)
        except KeyError:
            return None  # not configured (any more): no entry (a full pass removes the old one)
        directory = crl_dir(self.config)
        crl = _read(directory / full_crl_name(name))
        delta = _read(directory / delta_crl_name(name)) if settings.crl.delta else None
        return ca_entry(self.layout, name, certificate, crl, is_arl, delta)


def entry_from_rows(rows: Sequence[Row], first: dict[str, list[str]] | None = None) -> DesiredEntry:
    """One entry from its certificates' rows: their attributes merged (newest certificate first when they
    disagree: a new name, a new mail), every certificate a value. ``first``: the first row's attributes
    already decoded (``ldap export`` decodes a page's at once), a fresh object the entry takes over."""
    entry = DesiredEntry(rows[0][1], json.loads(rows[0][2]) if first is None else first)
    if len(rows) > 1 and any(r[2] != rows[0][2] for r in rows):
        entry.attributes = {}
        for attrs in dict.fromkeys(r[2] for r in sorted(rows, key=lambda r: -r[5])):
            entry.merge(json.loads(attrs))
    for row in rows:
        entry.certificates[bytes.fromhex(row[4])] = row[3]
    return entry


def inputs_hash(rows: list[Row]) -> int:
    """Hash of everything an entry's desired state is computed from (order-independent; compared only
    within this process). A collision would need 2**64 luck and still be caught by the incremental path
    (no cache) and by ``verify`` (no cache)."""
    return hash(tuple(sorted(rows)))


def _read(path: Path) -> bytes | None:
    """A published CRL file; a missing or non-regular one (a FIFO would block) counts as not published."""
    try:
        return read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s not placed in the directory: %s", path.name, exc.strerror)
        return None
