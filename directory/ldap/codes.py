"""LDAP result codes (RFC 4511 §4.1.9, Appendix A) said in words: every message that reports a code says
what it means and, where there is one, what usually fixes it (``49`` → invalid credentials for DN ...)."""

from __future__ import annotations

# code: (RFC 4511 name, what it means here; "{dn}" is the entry or bind DN concerned)
_CODES: dict[int, tuple[str, str]] = {
    0: ("success", "done"),
    1: ("operationsError", "the server could not perform the operation in this sequence"),
    2: ("protocolError", "the server did not understand the request"),
    3: ("timeLimitExceeded", "the server's time limit was reached"),
    4: ("sizeLimitExceeded", "the server's size limit was reached (the service's DN needs `limits` unlimited)"),
    7: ("authMethodNotSupported", "the server does not accept this way of binding"),
    8: ("strongerAuthRequired", "the server requires TLS or a stronger bind: set start_tls = true or use ldaps://"),
    11: ("adminLimitExceeded", "an administrative limit of the server was reached"),
    12: ("unavailableCriticalExtension", "the server does not support a control sent as critical"),
    13: ("confidentialityRequired", "the server requires TLS: set start_tls = true or use ldaps://"),
    16: ("noSuchAttribute", "{dn} has no such attribute or value"),
    17: ("undefinedAttributeType", "the server's schema lacks an attribute (is schema/health.schema loaded?)"),
    18: ("inappropriateMatching", "the attribute has no matching rule for this"),
    19: ("constraintViolation", "a value breaks a constraint of the server"),
    20: ("attributeOrValueExists", "{dn} already holds this value"),
    21: ("invalidAttributeSyntax", "a value does not fit its attribute's syntax"),
    32: ("noSuchObject", "{dn} or its parent does not exist (the suffix and branches: `annuaire ldap bootstrap`)"),
    34: ("invalidDNSyntax", "{dn} is not a valid DN"),
    48: ("inappropriateAuthentication", "the server refuses this kind of bind for {dn}"),
    49: ("invalidCredentials", "invalid credentials for {dn}: no such entry, or the password is wrong"),
    50: ("insufficientAccessRights", "{dn} may not do this (the directory's ACLs: the service's DN is the writer "
                                     "in deploy/slapd/provider.conf)"),
    51: ("busy", "the server is too busy; retried later"),
    52: ("unavailable", "the server is unavailable; retried later"),
    53: ("unwillingToPerform", "the server will not do this (a read-only replica, or a bind without password)"),
    54: ("loopDetect", "the server detected a referral loop"),
    64: ("namingViolation", "{dn} breaks the naming rules (its RDN is not allowed there)"),
    65: ("objectClassViolation", "{dn} breaks its object classes (a required attribute missing, or one not "
                                 "allowed)"),
    66: ("notAllowedOnNonLeaf", "{dn} still has entries below it"),
    67: ("notAllowedOnRDN", "the change would remove {dn}'s naming value"),
    68: ("entryAlreadyExists", "{dn} already exists"),
    69: ("objectClassModsProhibited", "the server does not let object classes change"),
    71: ("affectsMultipleDSAs", "the operation spans several servers"),
    80: ("other", "the server failed (its database may not be ready); retried later"),
}


def name(code: int) -> str:
    """``invalidCredentials`` for 49; ``code 99`` for one RFC 4511 does not name."""
    return _CODES.get(code, (f"code {code}", ""))[0]


def explain(code: int, message: str = "", dn: str = "") -> str:
    """``49 invalidCredentials: invalid credentials for cn=annuaire,o=sante,c=fr: no such entry, or the password
    is wrong (server: ...)``: the code, its name, what it means, and the server's own words when it sent any."""
    known = _CODES.get(code)
    text = f"{code} {known[0]}: {known[1].format(dn=dn or 'the entry')}" if known else f"{code} (an unknown code)"
    message = message.strip()
    return f"{text} (server: {message})" if message else text
