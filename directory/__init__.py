"""annuaire core: configuration, HSM signer, registry, ingestion, directory sync and the service."""
