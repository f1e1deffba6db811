"""OCSP responder (RFC 6960 / RFC 5019), mounted in the annuaire service."""
