"""The TOML configuration (``load_config``): one module per section, validated into frozen typed objects.

``reader`` (errors naming file and key, typed table access, paths and ``credential:``, durations, sizes),
``hsm``, ``http``, ``ldap``, ``admin``, ``check``, ``issuers`` (with their ``crl`` and ``ocsp`` tables, and
``policies``), and ``load`` (the whole file, ``[registry]`` included); ``certificates``: what the configured
certificates must be (``check-config``).
"""

from directory.config.admin import AdminConfig
from directory.config.check import CheckConfig
from directory.config.hsm import HsmConfig
from directory.config.http import HttpConfig
from directory.config.issuers import ISSUER_NAME, CrlConfig, IssuerConfig, OcspConfig
from directory.config.ldap import LdapConfig
from directory.config.load import Config, load_config
from directory.config.reader import CREDENTIAL, ConfigError, parse_duration, parse_size

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
