"""`annuaire ldap bootstrap` on an operator's own slapd (deploy/slapd/provider.conf, filled like an operator
does), and LDAP result codes said in words."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from directory.ldap.codes import explain, name
from tests.conftest import run_cli
from tests.operator_slapd import SUFFIX, operator_slapd


def _own_directory(config: Path, url: str, password_file: Path) -> None:
    text = config.read_text()
    text = re.sub(r'urls = \["ldap://127\.0\.0\.1:\d+"\]', f'urls = ["{url}"]', text)
    text = re.sub(r'password_file = "[^"]*ldap-password"', f'password_file = "{password_file}"', text)
    config.write_text(text.replace("managed = true", "managed = false"))


def _search(url: str, base: str, *args: str) -> str:
    return subprocess.run(["ldapsearch", "-x", "-LLL", "-H", url, "-b", base, *args], capture_output=True,
                          text=True).stdout


def test_result_codes_say_what_they_mean() -> None:
    assert explain(49, "", "cn=annuaire,o=sante,c=fr") == (
        "49 invalidCredentials: invalid credentials for cn=annuaire,o=sante,c=fr: no such entry, or the password "
        "is wrong")
    assert explain(65, "missing attribute", "cn=x").endswith("(server: missing attribute)")
    assert name(32) == "noSuchObject" and explain(999) == "999 (an unknown code)"


def test_bootstrap_readies_an_operators_slapd(private_config: Path, tmp_path: Path) -> None:
    service_password = tmp_path / "service-password"
    service_password.write_text("service-secret-1")
    with operator_slapd(tmp_path / "slapd") as slapd:
        _own_directory(private_config, slapd.url, service_password)
        base = ["ldap", "bootstrap", "--config", str(private_config), "--admin-dn", slapd.admin_dn]

        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password\n")
        refused = run_cli(*base, "--admin-password-file", str(wrong))
        assert refused.returncode == 1
        assert f"49 invalidCredentials: invalid credentials for {slapd.admin_dn}" in refused.stderr
        no_secret = run_cli(*base)  # no terminal to ask on, and never a password on the command line
        assert no_secret.returncode == 1 and "--admin-password-file or --admin-password-env" in no_secret.stderr

        done = run_cli(*base, "--admin-password-file", str(slapd.admin_password_file), "--json", check=True)
        report = json.loads(done.stdout)
        assert report["added"] == [SUFFIX, f"ou=AC,{SUFFIX}", f"ou=Personnes,{SUFFIX}", f"ou=Structures,{SUFFIX}",
                                   f"cn=annuaire,{SUFFIX}"] and report["password_set"]
        assert sorted(_search(slapd.url, SUFFIX, "-s", "one", "1.1").split()) == sorted(
            ["dn:", f"ou=AC,{SUFFIX}", "dn:", f"ou=Personnes,{SUFFIX}", "dn:", f"ou=Structures,{SUFFIX}", "dn:",
             f"cn=annuaire,{SUFFIX}"])
        whoami = subprocess.run(["ldapwhoami", "-x", "-H", slapd.url, "-D", f"cn=annuaire,{SUFFIX}", "-y",
                                 str(service_password)], capture_output=True, text=True)
        assert whoami.stdout.strip() == f"dn:cn=annuaire,{SUFFIX}", whoami.stderr
        stored = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", slapd.url, "-D", slapd.admin_dn, "-y",
                                 str(slapd.admin_password_file), "-b", f"cn=annuaire,{SUFFIX}", "userPassword"],
                                capture_output=True, text=True).stdout
        assert "service-secret" not in stored and "userPassword:: " in stored  # a hash, never the cleartext

        again = json.loads(run_cli(*base, "--admin-password-env", "ADMIN_PW", "--json", check=True,
                                   env={"ADMIN_PW": "operator-root-secret"}).stdout)
        assert again["added"] == [] and not again["password_set"]
        service_password.write_text("service-secret-2")  # rotated: the bind entry follows the file
        rotated = run_cli(*base, "--admin-password-file", str(slapd.admin_password_file), check=True)
        assert "password of cn=annuaire,o=sante,c=fr set" in rotated.stdout

        synced = run_cli("ldap", "sync", "--full", "--config", str(private_config), "--json", check=True)
        assert json.loads(synced.stdout)["added"] >= 3  # the CA entries, written as the service DN
        assert "cn: ac-personnes" in _search(slapd.url, f"ou=AC,{SUFFIX}", "(cn=ac-personnes)", "cn")
