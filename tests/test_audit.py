"""`annuaire audit verify|export`: the hash chain catches an edited, a deleted and a truncated record."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import run_cli


def _registry(demo: Path) -> sqlite3.Connection:
    return sqlite3.connect(demo.parent / "data" / "registry.sqlite3")


def test_audit_chain_verifies_and_names_edited_and_deleted_records(demo: Path, tmp_path: Path) -> None:
    ok = run_cli("audit", "verify", "-c", str(demo), "--json", check=True)
    report = json.loads(ok.stdout)
    assert report["ok"] and report["records"] > 60 and report["problems"] == []
    head = report["head"]
    export = tmp_path / "audit.jsonl"
    run_cli("audit", "export", "-c", str(demo), "-o", str(export), check=True)
    lines = export.read_text().splitlines()
    assert len(lines) == report["records"] and json.loads(lines[-1])["hash"] == head
    assert run_cli("audit", "verify", "-c", str(demo), "--file", str(export), "--head", head).returncode == 0

    # someone rewrites who revoked a certificate, in place
    with _registry(demo) as conn:
        victim = conn.execute("SELECT id FROM audit WHERE action = 'revoke' ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE audit SET actor = 'cli:someone-else' WHERE id = ?", (victim,))
    result = run_cli("audit", "verify", "-c", str(demo), "--json")
    problems = json.loads(result.stdout)["problems"]
    assert result.returncode == 1 and problems == [
        {"id": victim, "problem": "edited", "detail": "the record's fields no longer match its hash"}]
    text = run_cli("audit", "verify", "-c", str(demo))
    assert f"record {victim}: edited" in text.stdout and "BROKEN" in text.stdout

    # ... and someone deletes another record
    with _registry(demo) as conn:
        conn.execute("UPDATE audit SET actor = ? WHERE id = ?", (json.loads(lines[victim - 1])["actor"], victim))
        conn.execute("DELETE FROM audit WHERE id = ?", (victim + 5,))
    problems = json.loads(run_cli("audit", "verify", "-c", str(demo), "--json").stdout)["problems"]
    assert [(p["id"], p["problem"]) for p in problems] == [(victim + 6, "broken link")]
    assert f"records {victim + 5}..{victim + 5} are missing" in problems[0]["detail"]

    # removing the newest record keeps a consistent chain: only the noted head catches it
    with _registry(demo) as conn:  # (the deleted record put back first)
        row = json.loads(lines[victim + 4])
        conn.execute("INSERT INTO audit (id, at, actor, action, issuer, serial_hex, before, after, prev_hash, hash) "
                     "VALUES (:id, :at, :actor, :action, :issuer, :serial_hex, :before, :after, :prev_hash, :hash)",
                     row)
        last = conn.execute("SELECT MAX(id) FROM audit").fetchone()[0]
        conn.execute("DELETE FROM audit WHERE id = ?", (last,))
    assert run_cli("audit", "verify", "-c", str(demo)).returncode == 0
    truncated = run_cli("audit", "verify", "-c", str(demo), "--head", head, "--json")
    assert truncated.returncode == 1
    assert [p["problem"] for p in json.loads(truncated.stdout)["problems"]] == ["head missing"]
