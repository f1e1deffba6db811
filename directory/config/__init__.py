"""The TOML configuration (``load_config``), validated into frozen typed objects."""

from directory.config.load import (
    CREDENTIAL,
    ISSUER_NAME,
    AdminConfig,
    CheckConfig,
    Config,
    ConfigError,
    CrlConfig,
    HsmConfig,
    HttpConfig,
    IssuerConfig,
    LdapConfig,
    OcspConfig,
    load_config,
    parse_duration,
    parse_size,
)

__all__ = [
    "CREDENTIAL",
    "ISSUER_NAME",
    "AdminConfig",
    "CheckConfig",
    "Config",
    "ConfigError",
    "CrlConfig",
    "HsmConfig",
    "HttpConfig",
    "IssuerConfig",
    "LdapConfig",
    "OcspConfig",
    "load_config",
    "parse_duration",
    "parse_size",
]
