"""A private OpenLDAP slapd run as a managed child process (demo, tests; production uses its own).

It listens on loopback only, keeps its data under a directory of ours, and is stopped with us.

Started by root, it runs as an unprivileged user (``SlapdConfig.user``: ``openldap`` where the slapd
package made one, else ``nobody``) that owns its directory. The switch happens before slapd is executed
(what ``slapd -u/-g`` would do once started, without slapd ever holding root): the kernel clears the
parent-death signal on any credential change, so ``-u/-g`` would let slapd outlive a killed service.
The child changes into its directory while still root, and the configuration names everything in it by
relative paths: the user needs no access to the directories above (a data directory private to root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

SCHEMA_DIR = Path("/etc/ldap/schema")


def _shipped(name: str) -> Path:
    """A folder the package ships (``directory/ldap/shipped/``: the repository's ``schema/`` and
    ``deploy/slapd/``, linked in a checkout, copied into a wheel), as a path slapd can be given."""
    folder = resources.files(__package__) / "shipped" / name
    if not isinstance(folder, Path) or not folder.is_dir():
        raise RuntimeError(f"annuaire is installed without its {name} files ({folder}): reinstall it from a wheel")
    return folder


ANNUAIRE_SCHEMA_DIR = _shipped("schema")  # schema/ in the repository
SLAPD_TEMPLATES = _shipped("slapd")  # deploy/slapd/ in the repository
PROVIDER_TEMPLATE = SLAPD_TEMPLATES / "provider.conf"
MULTI_PROVIDER = SLAPD_TEMPLATES / "replication" / "multi-provider.conf"
CONSUMER = SLAPD_TEMPLATES / "replication" / "consumer.conf"
# (their cn=config forms, found by name: olc/provider.ldif, replication/olc/NAME.ldif for replication/NAME.conf)
SEED = SLAPD_TEMPLATES / "seed.ldif"  # a provider's first entries (slapadd -w before it starts)
_DATABASE_MARK = "# -- database --"
MODULE_DIRS = (Path("/usr/lib/ldap"), Path("/usr/lib/x86_64-linux-gnu/ldap"), Path("/usr/lib/aarch64-linux-gnu/ldap"))


class SlapdError(RuntimeError):
    """slapd is missing, its configuration is refused, or it did not start."""


def find_slapd() -> str:
    path = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    if path is None:
        raise SlapdError("slapd not found: install the slapd package (make run does)")
    return path


def _module_dir() -> Path:
    for candidate in MODULE_DIRS:
        if (candidate / "back_mdb.la").exists() or (candidate / "back_mdb.so").exists() or candidate.is_dir():
            return candidate
    raise SlapdError("OpenLDAP module directory not found")


@dataclass
class SlapdConfig:
    """Enough to write a slapd.conf for one mdb database."""

    directory: Path
    suffix: str
    root_dn: str
    root_password: str = field(repr=False)
    port: int = 389
    host: str = "127.0.0.1"
    schemas: tuple[Path, ...] = (SCHEMA_DIR / "core.schema", SCHEMA_DIR / "cosine.schema",
                                 SCHEMA_DIR / "inetorgperson.schema")
    indexes: tuple[str, ...] = ("objectClass eq", "cn eq,sub", "mail eq")
    extra: str = ""
    global_extra: str = ""  # global directives (TLS...), placed before the database section
    dbnosync: bool = True
    template: Path | None = None  # e.g. PROVIDER_TEMPLATE: @NAME@ placeholders filled from this config
    service_dn: str = ""
    replication: Path | None = None  # MULTI_PROVIDER or CONSUMER, added to the template
    replication_values: dict[str, str] = field(default_factory=dict, repr=False)  # PROVIDER1_URL, TLS_..., ...
    olc: bool = False  # run from a cn=config folder loaded from the templates' LDIF forms (slapd -F)
    user: str | None = None  # run slapd as this user (and its group); its paths are then relative to directory
    _root_hash: str = field(default="", init=False, repr=False)

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def run_dir(self) -> Path:
        """How the configuration names slapd's directory: relative when slapd runs as ``user`` from inside it."""
        return Path(".") if self.user else self.directory

    def values(self) -> dict[str, str]:
        """The templates' placeholders (explained in deploy/slapd/provider.conf), ROOT_PW as a hash."""
        if not self._root_hash:
            self._root_hash = hash_password(self.root_password)
        run_dir = self.run_dir
        schema_dir = run_dir if self.user else ANNUAIRE_SCHEMA_DIR  # a copy inside: readable by the user
        values = {"SCHEMA_DIR": SCHEMA_DIR, "ANNUAIRE_SCHEMA_DIR": schema_dir, "RUN_DIR": run_dir,
                  "MODULE_DIR": _module_dir(), "SUFFIX": self.suffix, "ROOT_DN": self.root_dn,
                  "ROOT_PW": self._root_hash, "DATA_DIR": run_dir / "data",
                  "SERVICE_DN": self.service_dn or self.root_dn, "REPLICATOR_DN": f"cn=replicator,{self.suffix}",
                  **self.replication_values}
        kind, _, name = self.suffix.partition(",")[0].partition("=")
        if kind.strip().lower() == "o":
            values.setdefault("ORGANIZATION", name.strip())
        return {name: str(value) for name, value in values.items()}

    def fill(self, text: str, source: Path) -> str:
        """``text`` with every @NAME@ replaced; a placeholder left outside comments is an error."""
        for name, value in self.values().items():
            text = text.replace(f"@{name}@", value)
        left = re.search(r"@[A-Z_0-9]+@", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
        if left:
            raise SlapdError(f"{source}: placeholder {left.group(0)} has no value")
        return text

    def render_olc(self) -> tuple[str, str | None]:
        """The cn=config forms: the base configuration (slapadd -n 0) and the replication changes (slapmodify)."""
        if self.template is None or self.extra or self.global_extra:
            raise SlapdError("the cn=config form exists for the provider template only, without extra lines")
        base = self.template.parent / "olc" / (self.template.stem + ".ldif")
        changes = self.replication and self.replication.parent / "olc" / (self.replication.stem + ".ldif")
        return self.fill(base.read_text(), base), changes and self.fill(changes.read_text(), changes)

    def render(self) -> str:
        run_dir = self.run_dir
        data = run_dir / "data"
        if self.template is not None:
            text = self.template.read_text()
            if self.replication is not None:
                global_part, _, database_part = self.replication.read_text().partition(_DATABASE_MARK)
                text = re.sub(r"^database\b", lambda m: global_part.strip() + "\n\n" + m.group(0), text, count=1,
                              flags=re.MULTILINE)
                text = text.rstrip("\n") + "\n\n" + database_part.strip() + "\n"
            text = self.fill(text, self.template)
            if self.global_extra:
                text = re.sub(r"^database\b", lambda m: self.global_extra + "\n\n" + m.group(0), text, count=1,
                              flags=re.MULTILINE)
            nosync = self.dbnosync and not re.search(r"^dbnosync\b", text, re.MULTILINE)
            return text + ("dbnosync\n" if nosync else "") + (self.extra + "\n" if self.extra else "")
        lines = [*(f"include {s}" for s in self.schemas),
                 f"pidfile {run_dir / 'slapd.pid'}",
                 f"modulepath {_module_dir()}", "moduleload back_mdb",
                 "database mdb", "maxsize 1073741824", f'suffix "{self.suffix}"', f'rootdn "{self.root_dn}"',
                 f"rootpw {self.root_password}", f"directory {data}",
                 *(f"index {i}" for i in self.indexes)]
        if self.dbnosync:
            lines.append("dbnosync")
        if self.extra:
            lines.append(self.extra)
        return "\n".join(lines) + "\n"


class Slapd:
    """Start, check and stop one slapd."""

    def __init__(self, config: SlapdConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.conf_file = config.directory / "slapd.conf"
        self.log_file = config.directory / "slapd.log"

    @property
    def config_dir(self) -> Path:
        """The cn=config folder (``olc``)."""
        return self.config.directory / "slapd.d"

    def config_args(self) -> list[str]:
        """slapd's configuration arguments; relative to its directory when it runs as ``config.user``."""
        path = self.config_dir if self.config.olc else self.conf_file
        return ["-F" if self.config.olc else "-f", path.name if self.config.user else str(path)]

    def write_config(self) -> None:
        directory = self.config.directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / "data").mkdir(exist_ok=True, mode=0o700)
        if self.config.olc:
            self._write_olc()
        else:
            self.conf_file.write_text(self.config.render())
            self.conf_file.chmod(0o600)
        if self.config.user:
            if self.config.port < 1024:
                raise SlapdError(f"slapd runs as {self.config.user} (the service runs as root): it cannot listen "
                                 f"on port {self.config.port}; use a port from 1024 up")
            shutil.copyfile(ANNUAIRE_SCHEMA_DIR / "health.schema", directory / "health.schema")
            uid, gid = _ids(self.config.user)
            for path in (directory, *directory.rglob("*")):  # its own files: the database, the pid file, ...
                os.chown(path, uid, gid, follow_symlinks=False)

    def _as_user(self) -> dict[str, object]:
        """Popen arguments that run a program as ``config.user`` in its directory (nothing without a user)."""
        if not self.config.user:
            return {}
        uid, gid = _ids(self.config.user)
        return {"cwd": self.config.directory, "user": uid, "group": gid, "extra_groups": []}

    def _write_olc(self) -> None:
        """A fresh cn=config folder: the base LDIF added, then the replication changes applied (offline)."""
        base, changes = self.config.render_olc()
        shutil.rmtree(self.config_dir, ignore_errors=True)
        self.config_dir.mkdir(mode=0o700)
        for tool, text in (("slapadd", base), ("slapmodify", changes)):
            if text is None:
                continue
            ldif = self.config.directory / f"{tool}.ldif"
            ldif.write_text(text)
            ldif.chmod(0o600)
            result = subprocess.run([_tool(tool), "-n", "0", "-F", str(self.config_dir), "-l", str(ldif)],
                                    capture_output=True, text=True, cwd=self.config.directory)
            ldif.unlink()
            if result.returncode != 0:
                raise SlapdError(f"{tool} -n 0 refused the cn=config form: {result.stderr.strip()}")

    def test_config(self) -> None:
        """``slaptest`` on the written configuration (as the user slapd will run as)."""
        result = subprocess.run([_tool("slaptest"), "-u", *self.config_args()], capture_output=True, text=True,
                                **self._as_user())  # type: ignore[call-overload]
        if result.returncode != 0:
            raise SlapdError(f"slaptest refused {self.config_args()[1]}: {result.stderr.strip()}")

    def load(self, ldif: str) -> None:
        """``slapadd -w`` into the (stopped) database: entries before the first start (deploy/slapd/seed.ldif)."""
        self.write_config()
        result = subprocess.run([_tool("slapadd"), "-w", "-b", self.config.suffix, *self.config_args()],
                                input=ldif, capture_output=True, text=True,
                                **self._as_user())  # type: ignore[call-overload]
        if result.returncode != 0:
            raise SlapdError(f"slapadd refused the entries: {result.stderr.strip()}")

    def start(self, timeout: float = 15.0, die_with_parent: bool = False) -> None:
        """Start and wait until it listens. ``die_with_parent``: the kernel sends slapd SIGTERM when the
        calling thread's process dies, even by SIGKILL (call it from the main thread: Linux ties this to
        the thread that started the child)."""
        self.prepare()
        self.spawn(die_with_parent)
        self.wait_listening(timeout)

    def prepare(self) -> None:
        """Write and check the configuration (blocking for a moment: slaptest)."""
        self.write_config()
        self.test_config()

    def spawn(self, die_with_parent: bool = False) -> None:
        """Execute slapd (as ``config.user`` when set), without waiting for it to listen."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                [find_slapd(), *self.config_args(), "-h", self.config.url + "/", "-d", "0"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_parent_death_signal if die_with_parent else None, **self._as_user())

    def wait_listening(self, timeout: float = 15.0) -> None:
        """Return once slapd accepts connections; ``SlapdError`` (and slapd stopped) if it exits or stays mute."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SlapdError(f"slapd exited with {self.process.returncode}; see {self.log_file}")
            with contextlib.suppress(OSError), socket.create_connection((self.config.host, self.config.port), 0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise SlapdError(f"slapd did not listen on {self.config.url} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def hash_password(secret: str) -> str:
    """A userPassword / rootpw value slapd checks binds against: ``{ARGON2}`` from slapd's own argon2 module
    where it is installed (Debian's slapd ships it), ``{SSHA}`` otherwise. The secret goes through a pipe,
    never on a command line."""
    argon2 = any((_module_dir() / f"argon2.{ext}").exists() for ext in ("la", "so"))
    scheme = ["-o", f"module-path={_module_dir()}", "-o", "module-load=argon2", "-h", "{ARGON2}"] if argon2 \
        else ["-h", "{SSHA}"]
    result = subprocess.run([_tool("slappasswd"), *scheme, "-T", "/dev/stdin"], input=secret, capture_output=True,
                            text=True)
    if result.returncode != 0 or not result.stdout.startswith("{"):
        raise SlapdError(f"slappasswd failed: {result.stderr.strip()}")
    return result.stdout.strip()


def unprivileged_user() -> str | None:
    """Who slapd runs as: nobody to change when we are not root; else ``openldap`` (made by Debian's slapd
    package) when it exists, or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("openldap", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise SlapdError("running as root and neither an openldap nor a nobody user exists to run slapd as")


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _parent_death_signal() -> None:
    """In the child, before exec: PR_SET_PDEATHSIG(SIGTERM)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
