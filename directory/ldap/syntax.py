"""What the directory's attribute syntaxes accept: a projected value slapd would refuse is never sent.

slapd refuses a whole add or modify when one value breaks its attribute's syntax (``21 invalidAttributeSyntax``);
one bad subject field would then block every later write to that entry, revocations included. So each
projected value is checked here first, against the syntax its attribute has in ``schema/health.schema`` and
OpenLDAP's ``core``/``cosine``/``inetorgperson`` schemas (``tests/test_ldap_syntax.py`` checks this table
against those files and each rule against a real slapd). A value that fails is left out, with the reason.

The rules are slapd's, made stricter only where a value would mean nothing: blank strings are left out even
where the syntax allows them (an empty ``mail``, a ``title`` of spaces).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from directory.ldap.dn import fold

# RFC 4517 syntaxes (OIDs as in the schema files)
DIRECTORY_STRING = "1.3.6.1.4.1.1466.115.121.1.15"
IA5_STRING = "1.3.6.1.4.1.1466.115.121.1.26"
PRINTABLE_STRING = "1.3.6.1.4.1.1466.115.121.1.44"
COUNTRY_STRING = "1.3.6.1.4.1.1466.115.121.1.11"
NUMERIC_STRING = "1.3.6.1.4.1.1466.115.121.1.36"
OID = "1.3.6.1.4.1.1466.115.121.1.38"

# Attributes a projection can fill (the fixed mapping, and those a DN template may name), lower case.
SYNTAX_OF: dict[str, str] = {
    "cn": DIRECTORY_STRING, "sn": DIRECTORY_STRING, "givenname": DIRECTORY_STRING, "title": DIRECTORY_STRING,
    "o": DIRECTORY_STRING, "ou": DIRECTORY_STRING, "l": DIRECTORY_STRING, "st": DIRECTORY_STRING,
    "uid": DIRECTORY_STRING, "displayname": DIRECTORY_STRING, "description": DIRECTORY_STRING,
    "mail": IA5_STRING, "serialnumber": PRINTABLE_STRING, "c": COUNTRY_STRING, "objectclass": OID,
    "healthprofessionalid": DIRECTORY_STRING, "healthidentifiertype": DIRECTORY_STRING,
    "healthprofession": DIRECTORY_STRING, "healthspecialty": DIRECTORY_STRING,
    "healthstructureid": DIRECTORY_STRING, "healthstructureidtype": DIRECTORY_STRING,
}

_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
_NUMERIC = re.compile(r"[0-9 ]+")
_OID = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-2](\.(0|[1-9][0-9]*))+")


def problem(attribute: str, value: str) -> str | None:
    """Why the directory would refuse (or should not get) ``value`` for ``attribute``; None when fine.

    An attribute missing from the table gets the Directory String rule (the most common syntax, and
    the loosest: anything stricter would still refuse what it refuses)."""
    syntax = SYNTAX_OF.get(attribute.split(";", 1)[0].lower(), DIRECTORY_STRING)
    if not value.strip():
        return "empty" if not value else "blank"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not encodable as UTF-8"
    if syntax == DIRECTORY_STRING:
        return None
    if syntax == IA5_STRING:
        return None if value.isascii() else "not ASCII (IA5String)"
    if syntax == PRINTABLE_STRING:
        return None if _PRINTABLE.fullmatch(value) else "outside PrintableString's characters"
    if syntax == COUNTRY_STRING:
        return None if len(value) == 2 and _PRINTABLE.fullmatch(value) else "not two PrintableString characters"
    if syntax == NUMERIC_STRING:
        return None if _NUMERIC.fullmatch(value) else "not a NumericString"
    return None if _OID.fullmatch(value) else "not an OID or descriptor"


def clean(attributes: dict[str, list[str]], omitted: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """``attributes`` without the values ``problem`` refuses, nor repeats under the attribute's matching
    rule (compared as ``dn.fold`` does: slapd refuses an add that carries one value twice). Each value left
    out is appended to ``omitted`` as (attribute, value, reason); attributes left with no value are dropped."""
    out: dict[str, list[str]] = {}
    for name, values in attributes.items():
        kept = keep(name, values, omitted)
        if kept:
            out[name] = kept
    return out


def keep(name: str, values: Iterable[str], omitted: list[tuple[str, str, str]]) -> list[str]:
    """The values of one attribute the directory accepts, in order, first of each repeat."""
    kept: list[str] = []
    seen: set[str] = set()
    for value in values:
        reason = problem(name, value)
        if reason is None:
            folded = fold(value)
            if folded in seen:
                reason = "repeated (the directory compares it equal to an earlier value)"
            else:
                seen.add(folded)
                kept.append(value)
                continue
        omitted.append((name, value, reason))
    return kept
