"""Versioned registry migrations. Append only: a released migration is never edited.

Times are integer seconds since the epoch (UTC); serials are canonical lower-case hex
(``directory.serials``); DER is stored as BLOB. The SQL is kept portable (no SQLite-only types
in the table definitions) so that the PostgreSQL backend can reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509

from directory import certinfo
from directory.cert_id import is_canonical_answer
from directory.registry.backends import Conn
from directory.registry.crl_entries import serial_low, store_crl_entry

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "issuers, certificates, audit",
        """
        CREATE TABLE issuers (
            id               INTEGER PRIMARY KEY,
            name             TEXT NOT NULL UNIQUE,
            subject_der      BLOB NOT NULL,
            certificate_der  BLOB NOT NULL,
            last_crl_number  INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE certificates (
            id               INTEGER PRIMARY KEY,
            issuer_id        INTEGER NOT NULL REFERENCES issuers(id),
            serial_hex       TEXT NOT NULL,
            subject_dn       TEXT,
            emails           TEXT NOT NULL DEFAULT '',
            dns_names        TEXT NOT NULL DEFAULT '',
            professional_id  TEXT,
            not_before       INTEGER,
            not_after        INTEGER,
            der              BLOB,
            sha256           TEXT,
            profile          TEXT,
            status           TEXT NOT NULL DEFAULT 'good'
                             CHECK (status IN ('good', 'revoked', 'on-hold')),
            revocation_time  INTEGER,
            reason           TEXT,
            invalidity_date  INTEGER,
            forced           INTEGER NOT NULL DEFAULT 0,
            imported_at      INTEGER NOT NULL,
            updated_at       INTEGER NOT NULL,
            UNIQUE (issuer_id, serial_hex)
        );
        CREATE INDEX certificates_status ON certificates (issuer_id, status);
        CREATE INDEX certificates_sha256 ON certificates (sha256);
        CREATE INDEX certificates_professional_id ON certificates (professional_id);
        CREATE TABLE audit (
            id          INTEGER PRIMARY KEY,
            at          INTEGER NOT NULL,
            actor       TEXT NOT NULL,
            action      TEXT NOT NULL,
            issuer      TEXT,
            serial_hex  TEXT,
            before      TEXT,
            after       TEXT,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL
        );
        """,
    ),
]

MIGRATIONS.append((
    2,
    "CRL publication: entry DER kept at revocation, status change log, CRL number scopes, CRL records",
    """
    ALTER TABLE certificates ADD COLUMN serial_low INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE crl_entries (
        issuer_id       INTEGER NOT NULL REFERENCES issuers(id),
        certificate_id  INTEGER NOT NULL REFERENCES certificates(id),
        not_after       INTEGER,
        serial_low      INTEGER NOT NULL,
        entry_der       BLOB NOT NULL,
        PRIMARY KEY (issuer_id, certificate_id)
    ) WITHOUT ROWID;
    CREATE TABLE status_changes (
        seq             INTEGER PRIMARY KEY,
        issuer_id       INTEGER NOT NULL REFERENCES issuers(id),
        certificate_id  INTEGER NOT NULL REFERENCES certificates(id),
        at              INTEGER NOT NULL,
        status          TEXT NOT NULL
    );
    CREATE INDEX status_changes_issuer ON status_changes (issuer_id, seq);
    CREATE TABLE crl_scopes (
        issuer_id    INTEGER NOT NULL REFERENCES issuers(id),
        scope        TEXT NOT NULL,
        last_number  INTEGER NOT NULL,
        PRIMARY KEY (issuer_id, scope)
    );
    CREATE TABLE crls (
        id           INTEGER PRIMARY KEY,
        issuer_id    INTEGER NOT NULL REFERENCES issuers(id),
        scope        TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('full', 'delta')),
        number       INTEGER NOT NULL,
        base_number  INTEGER,
        this_update  INTEGER NOT NULL,
        next_update  INTEGER NOT NULL,
        change_seq   INTEGER NOT NULL DEFAULT 0,
        state        TEXT NOT NULL CHECK (state IN ('building', 'published', 'failed')),
        entries      INTEGER,
        size         INTEGER,
        sha256       TEXT,
        error        TEXT,
        created_at   INTEGER NOT NULL,
        UNIQUE (issuer_id, scope, number)
    );
    """,
))

MIGRATIONS.append((
    3,
    "OCSP: pre-signed responses persisted so that a restart does not stampede the HSM",
    """
    CREATE TABLE ocsp_responses (
        issuer_id    INTEGER NOT NULL REFERENCES issuers(id),
        serial_hex   TEXT NOT NULL,
        hash_name    TEXT NOT NULL,
        this_update  INTEGER NOT NULL,
        next_update  INTEGER NOT NULL,
        body         BLOB NOT NULL,
        PRIMARY KEY (issuer_id, serial_hex, hash_name)
    );
    CREATE INDEX ocsp_responses_this_update ON ocsp_responses (this_update);
    """,
))

MIGRATIONS.append((
    4,
    "LDAP directory: outbox of entries to reconcile, projection of certificates onto entries, sync state",
    """
    CREATE TABLE ldap_outbox (
        id              INTEGER PRIMARY KEY,
        issuer_id       INTEGER NOT NULL REFERENCES issuers(id),
        certificate_id  INTEGER REFERENCES certificates(id),
        enqueued_at     INTEGER NOT NULL
    );
    CREATE TABLE ldap_projection (
        certificate_id  INTEGER PRIMARY KEY REFERENCES certificates(id),
        layout          TEXT NOT NULL,
        dn_key          TEXT,
        dn              TEXT,
        attributes      TEXT
    );
    CREATE INDEX ldap_projection_dn_key ON ldap_projection (dn_key);
    CREATE TABLE ldap_state (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE INDEX certificates_not_after ON certificates (not_after);
    """,
))

MIGRATIONS.append((
    5,
    "Millisecond times of status changes and outbox rows: revocation-to-visibility latency per channel",
    """
    ALTER TABLE status_changes ADD COLUMN at_ms INTEGER;
    ALTER TABLE ldap_outbox ADD COLUMN enqueued_ms INTEGER;
    """,
))

MIGRATIONS.append((
    6,
    "Several nodes: the bytes of the newest published CRLs, for nodes that did not build them",
    """
    ALTER TABLE crls ADD COLUMN der BLOB;
    """,
))

MIGRATIONS.append((
    7,
    "OCSP: persisted answers whose CertID is not the canonical one for their issuer, serial and hash are dropped",
    "",  # the check is the responder's own rule (directory.cert_id), run by the registry's backfill for 7
))

MIGRATIONS.append((
    8,
    "LDAP dead letters: a write the directory refused keeps its outbox row, with the reason and a retry time",
    """
    ALTER TABLE ldap_outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE ldap_outbox ADD COLUMN last_error TEXT;
    ALTER TABLE ldap_outbox ADD COLUMN next_attempt_at INTEGER;
    CREATE INDEX ldap_outbox_certificate ON ldap_outbox (certificate_id);
    """,
))

MIGRATIONS.append((
    9,
    "Publication checker: its small state (rolling-sample cursor and last report per node)",
    """
    CREATE TABLE check_state (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """,
))

MIGRATIONS.append((
    10,
    "A certificate's status changes by certificate: a re-import compares the file with the registry's last "
    "change, a delta CRL reads a certificate's previous status",
    """
    CREATE INDEX status_changes_certificate ON status_changes (certificate_id, seq);
    """,
))

MIGRATIONS.append((
    11,
    "Revocation visibility counted once per change and channel: per-node cursors, and each outbox row's change",
    """
    CREATE TABLE node_state (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    ALTER TABLE ldap_outbox ADD COLUMN change_seq INTEGER;
    """,
))

MIGRATIONS.append((
    12,
    "Certificates shaped like the health sector's: the identifier a card carries in its CN, the mobility and "
    "organisation families, read again from the stored certificates",
    "",  # the rule is certinfo's, run by the registry's backfill for 12
))


def _backfill_v2(tx: Conn) -> None:
    """The partition key and the CRL entry bytes of every certificate registered before migration 2."""
    rows = tx.execute("SELECT id, issuer_id, serial_hex, not_after, status, revocation_time, reason, "
                      "invalidity_date FROM certificates")
    for cid, issuer_id, serial_hex, not_after, status, rtime, reason, inval in rows.fetchall():
        tx.execute("UPDATE certificates SET serial_low = ? WHERE id = ?", (serial_low(serial_hex), cid))
        store_crl_entry(tx, issuer_id, cid, serial_hex, not_after, status, rtime, reason, inval)


def _backfill_v7(tx: Conn) -> None:
    """Drop persisted OCSP answers whose CertID is not the canonical one for their row (answers echoing a
    request's bytes had been cached, persisted and served to everyone); they are signed again."""
    issuers = {i: bytes(der) for i, der in tx.execute("SELECT id, certificate_der FROM issuers").fetchall()}
    after: tuple[Any, ...] = (0, "", "")
    while True:
        rows = tx.execute("SELECT issuer_id, serial_hex, hash_name, body FROM ocsp_responses "
                          "WHERE (issuer_id, serial_hex, hash_name) > (?, ?, ?) "
                          "ORDER BY issuer_id, serial_hex, hash_name LIMIT 2000", after).fetchall()
        if not rows:
            return
        tx.executemany("DELETE FROM ocsp_responses WHERE issuer_id = ? AND serial_hex = ? AND hash_name = ?",
                       [(i, s, h) for i, s, h, body in rows
                        if not is_canonical_answer(issuers[i], s, h, bytes(body))])
        after = tuple(rows[-1][:3])


def _backfill_v12(tx: Conn) -> None:
    """The professional identifier and profile of certificates imported before certinfo read a card's CN
    (``SN=…+CN=<idNat_PS>+GN=…``) and told software certificates of persons and organisations apart: only rows
    without an identifier can change (a serialNumber was read already). The next sync projects every
    certificate again (a new projection version), with these profiles."""
    after = 0
    while True:
        rows = tx.execute("SELECT id, der, profile FROM certificates WHERE id > ? AND professional_id IS NULL "
                          "AND der IS NOT NULL AND COALESCE(profile, '') NOT IN ('ca', 'ocsp-signing') "
                          "ORDER BY id LIMIT 2000", (after,)).fetchall()
        if not rows:
            return
        updates = []
        for cid, der, profile in rows:
            try:
                cert = x509.load_der_x509_certificate(bytes(der))
                found, family = certinfo.professional_id(cert.subject), certinfo.profile_of(cert)
            except ValueError:
                continue  # stored as imported: nothing new can be read from it
            if found is not None or family != profile:
                updates.append((found, family, cid))
        tx.executemany("UPDATE certificates SET professional_id = ?, profile = ? WHERE id = ?", updates)
        after = rows[-1][0]


BACKFILLS: dict[int, Callable[[Conn], None]] = {2: _backfill_v2, 7: _backfill_v7}
BACKFILLS[12] = _backfill_v12
