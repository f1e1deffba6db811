"""Pre-signed OCSP answers kept in the registry: reloaded at start, refreshed at half validity."""

from __future__ import annotations

from collections.abc import Iterator

from directory.registry.core import RegistryCore


class OcspAnswers(RegistryCore):
    """Persisted answers per (issuer, serial, hash algorithm)."""

    def ocsp_store(self, rows: list[tuple[str, str, str, int, int, bytes]]) -> None:
        """Persist pre-signed responses: (issuer, serial_hex, hash_name, this_update, next_update, body)."""
        if not rows:
            return
        with self._write() as tx:
            tx.executemany("INSERT OR REPLACE INTO ocsp_responses (issuer_id, serial_hex, hash_name, this_update, "
                           "next_update, body) VALUES (?, ?, ?, ?, ?, ?)",
                           [(self._issuer_id(i), s, h, t, n, b) for i, s, h, t, n, b in rows])

    def ocsp_load(self, now: int) -> Iterator[tuple[str, str, str, int, int, bytes]]:
        """Persisted responses still valid and signed after the certificate's last change."""
        yield from self._conn().execute(
            "SELECT i.name, r.serial_hex, r.hash_name, r.this_update, r.next_update, r.body FROM ocsp_responses r "
            "JOIN issuers i ON i.id = r.issuer_id JOIN certificates c ON c.issuer_id = r.issuer_id "
            "AND c.serial_hex = r.serial_hex WHERE r.next_update > ? AND c.updated_at < r.this_update", (now,))

    def ocsp_due(self, issuer: str, signed_before: int) -> list[tuple[str, str]]:
        """(serial_hex, hash_name) of persisted responses signed before ``signed_before`` (to refresh)."""
        return [(r[0], r[1]) for r in self._conn().execute(
            "SELECT serial_hex, hash_name FROM ocsp_responses WHERE issuer_id = ? AND this_update < ?",
            (self._issuer_id(issuer), signed_before))]
