"""What the LDAP sync reads to compute the directory: projections per layout, desired entries, its state.

Each certificate's DN and attributes are projected once per layout (at import, or by the sync for one
that has none) into ``ldap_projection``; the desired directory is the good, unexpired certificates that
map to an entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from directory.registry.core import RegistryCore, chunks


class LdapProjection(RegistryCore):
    """The sync's reads and its small state (``ldap_state``)."""

    def ldap_unprojected(self, layout: str, certificate_ids: Sequence[int] | None = None) -> list[int]:
        """Certificates with bytes and no projection for ``layout`` (all, or among ``certificate_ids``)."""
        sql = ("SELECT c.id FROM certificates c LEFT JOIN ldap_projection p ON p.certificate_id = c.id "
               "WHERE c.der IS NOT NULL AND (p.layout IS NULL OR p.layout != ?)")
        if certificate_ids is None:
            return [r[0] for r in self._conn().execute(sql, (layout,))]
        out: list[int] = []
        for chunk in chunks(list(certificate_ids), 500):
            out += [r[0] for r in self._conn().execute(sql + f" AND c.id IN ({','.join('?' * len(chunk))})",
                                                       (layout, *chunk))]
        return out

    def projection_inputs(self, certificate_ids: Sequence[int]) -> list[tuple[int, bytes, str | None, str]]:
        """(id, der, profile, emails) of the given certificates."""
        out: list[tuple[int, bytes, str | None, str]] = []
        for chunk in chunks(list(certificate_ids), 500):
            out += [(r[0], bytes(r[1]), r[2], r[3]) for r in self._conn().execute(
                "SELECT id, der, profile, emails FROM certificates WHERE der IS NOT NULL AND id IN "
                f"({','.join('?' * len(chunk))})", chunk)]
        return out

    def ldap_project(self, layout: str, rows: Sequence[tuple[int, str | None, str | None, str | None]]) -> None:
        """Store (certificate id, dn_key, dn, attributes JSON) computed for ``layout``."""
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ldap_projection (certificate_id, layout, dn_key, dn, attributes) "
                           "VALUES (?, ?, ?, ?, ?)", [(cid, layout, k, d, a) for cid, k, d, a in rows])

    def ldap_project_serials(self, layout: str, issuer: str,
                             rows: Sequence[tuple[str, str | None, str | None, str | None]]) -> None:
        """``ldap_project`` keyed by serial (what an import knows): (serial_hex, dn_key, dn, attributes JSON)."""
        issuer_id = self._issuer_id(issuer)
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ldap_projection (certificate_id, layout, dn_key, dn, attributes) "
                           "SELECT id, ?, ?, ?, ? FROM certificates WHERE issuer_id = ? AND serial_hex = ?",
                           [(layout, k, d, a, issuer_id, serial) for serial, k, d, a in rows])

    def ldap_dn_keys(self, layout: str, certificate_ids: Sequence[int]) -> set[str]:
        """Entries (dn_key) the given certificates map to, whatever their status."""
        keys: set[str] = set()
        for chunk in chunks(list(certificate_ids), 500):
            keys.update(r[0] for r in self._conn().execute(
                f"SELECT dn_key FROM ldap_projection WHERE layout = ? AND dn_key IS NOT NULL "
                f"AND certificate_id IN ({','.join('?' * len(chunk))})", (layout, *chunk)))
        return keys

    def ldap_published(self, layout: str, now: int, dn_keys: Sequence[str] | None = None,
                       ) -> Iterator[tuple[str, str, str, int, str, int]]:
        """(dn_key, dn, attributes JSON, certificate id, sha256, not_before) of what the directory must
        show: good, unexpired certificates that map to an entry. All of them, or those of ``dn_keys``."""
        sql = ("SELECT p.dn_key, p.dn, p.attributes, c.id, c.sha256, COALESCE(c.not_before, 0) "
               "FROM ldap_projection p JOIN certificates c ON c.id = p.certificate_id "
               "WHERE p.layout = ? AND p.dn_key IS NOT NULL AND c.status = 'good' AND c.der IS NOT NULL "
               "AND (c.not_after IS NULL OR c.not_after > ?)")
        if dn_keys is None:
            yield from self._conn().execute(sql, (layout, now))
            return
        for chunk in chunks(list(dn_keys), 500):
            yield from self._conn().execute(sql + f" AND p.dn_key IN ({','.join('?' * len(chunk))})",
                                            (layout, now, *chunk))

    def ldap_published_page(self, layout: str, now: int, after: tuple[str, int] | None, limit: int,
                            ) -> list[tuple[str, str, str, int, str, int, bytes]]:
        """``ldap_published`` in pages ordered by entry (dn_key, then certificate id), from just after
        ``after``, each row with the certificate's bytes last: an export streams the whole directory in
        bounded memory on either backend (PostgreSQL's cursors would hold every row at once)."""
        sql = ("SELECT p.dn_key, p.dn, p.attributes, c.id, c.sha256, COALESCE(c.not_before, 0), c.der "
               "FROM ldap_projection p JOIN certificates c ON c.id = p.certificate_id "
               "WHERE p.layout = ? AND p.dn_key IS NOT NULL AND c.status = 'good' AND c.der IS NOT NULL "
               "AND (c.not_after IS NULL OR c.not_after > ?)")
        args: tuple[object, ...] = (layout, now)
        if after is not None:
            sql += " AND p.dn_key >= ? AND (p.dn_key > ? OR p.certificate_id > ?)"
            args += (after[0], after[0], after[1])
        return self._conn().execute(sql + " ORDER BY p.dn_key, p.certificate_id LIMIT ?", (*args, limit)).fetchall()

    def ldap_projected_dns(self, layout: str, dn_keys: Sequence[str]) -> list[tuple[str, str]]:
        """(dn_key, dn) as projected, for entries that may have to be removed."""
        out: list[tuple[str, str]] = []
        for chunk in chunks(list(dn_keys), 500):
            out += [(r[0], r[1]) for r in self._conn().execute(
                f"SELECT dn_key, MIN(dn) FROM ldap_projection WHERE layout = ? AND dn_key IN "
                f"({','.join('?' * len(chunk))}) GROUP BY dn_key", (layout, *chunk))]
        return out

    def ldap_unplaced(self, layout: str, now: int) -> int:
        """Good, unexpired end-entity certificates that no DN template could place in the directory."""
        return int(self._conn().execute(
            "SELECT COUNT(*) FROM ldap_projection p JOIN certificates c ON c.id = p.certificate_id "
            "WHERE p.layout = ? AND p.dn_key IS NULL AND c.status = 'good' AND c.profile NOT IN ('ca', "
            "'ocsp-signing') AND (c.not_after IS NULL OR c.not_after > ?)", (layout, now)).fetchone()[0])

    def published_state(self, certificate_id: int, now: int) -> tuple[str, int] | None:
        """(sha256, not_before) when the certificate must be in the directory (good, unexpired), else None."""
        row = self._conn().execute(
            "SELECT sha256, COALESCE(not_before, 0) FROM certificates WHERE id = ? AND status = 'good' "
            "AND der IS NOT NULL AND (not_after IS NULL OR not_after > ?)", (certificate_id, now)).fetchone()
        return (row[0], row[1]) if row else None

    def certificate_ders(self, certificate_ids: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for chunk in chunks(list(certificate_ids), 500):
            out.update((r[0], bytes(r[1])) for r in self._conn().execute(
                f"SELECT id, der FROM certificates WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def expired_between(self, after: int, until: int) -> list[int]:
        """Certificates whose notAfter passed in (after, until]: their directory values must go."""
        return [r[0] for r in self._conn().execute(
            "SELECT id FROM certificates WHERE not_after > ? AND not_after <= ?", (after, until))]

    def issuer_certificates(self) -> list[tuple[str, bytes, bool]]:
        """(name, CA certificate DER, whether it has issued CA certificates: its CRL is then also an ARL)."""
        return [(r[0], bytes(r[1]), bool(r[2])) for r in self._conn().execute(
            "SELECT i.name, i.certificate_der, EXISTS (SELECT 1 FROM certificates c WHERE c.issuer_id = i.id "
            "AND c.profile = 'ca') FROM issuers i ORDER BY i.name")]

    def state_get(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM ldap_state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def state_set(self, values: dict[str, str]) -> None:
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ldap_state (name, value) VALUES (?, ?)", list(values.items()))
