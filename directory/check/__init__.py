"""The publication checker: a relying party against the service's own public channels (OCSP, CRLs, LDAP)."""
