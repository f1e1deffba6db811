"""PKCS#11 signing: issuer keys stay in the HSM."""
