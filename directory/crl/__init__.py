"""CRL publication: building, signing, self-checking, publishing and serving X.509 v2 CRLs."""
