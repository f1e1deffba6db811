"""What the public publication point says (``GET /`` and ``/status.json``): the operator overview minus
the service's internal operations.

Public: each CA (certificate, fingerprints, responder certificate, certification policies, counts, CRLs),
the directory's address, and whether every channel is current. A problem is said the way a relying party
needs it: which CRL is late or missing, or one sentence per degraded part (the HSM, the directory, a
channel disagreeing with the registry); its details (outbox depth, sync passes, drift, dead letters, the
checker's reports, readiness reasons) are on the operator view of the admin listener
(``GET /api/v1/operations``, ``/ops``).
"""

from __future__ import annotations

from typing import Any

from directory.ops.i18n import text

# a readiness or overview part -> the code of the one sentence relying parties get about it
_PUBLIC_CODE = {"hsm": "hsm", "ldap": "ldap", "ldap-sync": "ldap", "publication": "publication", "crl": "crl-served"}
_PUBLIC_PART = {"ldap-sync": "ldap"}


def public_view(data: dict[str, Any], readiness: dict[str, str]) -> dict[str, Any]:
    """``data``: ``overview()``'s; ``readiness``: the service's failing readiness checks (reasons kept out)."""
    problems: list[dict[str, str]] = []
    for issuer in data["issuers"]:
        for crl in issuer["crls"]:
            file = crl["url"].rsplit("/", 1)[-1]
            if not crl["published"]:
                code = "crl-missing" if crl["kind"] == "full" else None
            else:
                code = "crl-expired" if crl["expired"] else "crl-stale" if crl.get("stale") else None
            if code is not None:
                problems.append({"part": "crl", "code": code, "file": file, "text": text(code, "en", file=file)})
    said_crl = bool(problems)
    parts = {p["part"] for p in data["health"]["problems"] if p["part"] != "crl"} | set(readiness)
    codes: set[str] = set()
    for part in sorted(parts):
        code = _PUBLIC_CODE.get(part, "degraded")
        if code in codes or (code == "crl-served" and said_crl):
            continue
        codes.add(code)
        problems.append({"part": _PUBLIC_PART.get(part, part), "code": code, "text": text(code, "en")})
    directory = data["directory"]
    return {
        "generated_at": data["generated_at"],
        "base_url": data["base_url"],
        "issuers": data["issuers"],
        "directory": {"urls": directory["urls"], "suffix": directory["suffix"]} if directory is not None else None,
        "health": {"ok": not problems, "problems": problems},
    }
