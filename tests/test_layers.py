"""The tree's layers: imports only go down (a part never imports one above it), lazy imports included.

From the bottom: value codecs and rules that import nothing of ours (DER, serials, times, refusals,
publication facts, the revocation decision), then configuration and the HSM signer, the registry, the
importer, the three channels (CRL, LDAP, OCSP), the operations views, the service that mounts them, the
admin API and the publication checker, and the command line on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BOTTOM = {"der", "der_reader", "serials", "inputs", "refusal", "httpdate", "histogram", "logs", "wording", "version"}
LAYERS = [
    BOTTOM,
    {"publication", "cert_id", "revocation", "sector", "certinfo"},
    {"config", "hsm"},
    {"registry"},
    {"ingest"},
    {"crl", "ldap", "runtime", "ocsp"},
    {"ops"},
    {"service", "demo"},
    {"admin", "check"},
    {"cli"},
]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "ocsp":
        return 5
    if parts[0] != "directory" or len(parts) < 2:
        return None
    if parts[1:3] == ["ldap", "dn"]:  # RFC 4514 names: a codec, as low as the DER one
        return 0
    return next(i for i, names in enumerate(LAYERS) if parts[1] in names)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    files = sorted([*ROOT.glob("directory/**/*.py"), *ROOT.glob("ocsp/*.py")])
    assert len(files) > 50
    for path in files:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mine = _layer(module) if module != "directory" else 0
        assert mine is not None, module
        for target in _imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_every_part_has_a_layer() -> None:
    named = set().union(*LAYERS)
    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "directory").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts <= named, parts - named
