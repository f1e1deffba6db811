#!/bin/sh
# Render the slapd configuration of this node from the templates, seed a provider's empty database, then
# run slapd in the foreground. ROLE=provider|consumer, SELF_URL=ldap://HOST/ (must match a serverID URL for
# providers). Secrets (/run/secrets): ldap-replicator-password, ldap-password (annuaire's bind, seeded
# into providers), ldap-ca (the CA of the directory certificates), ldap-tls-certificate and ldap-tls-key (a
# certificate naming ldap-provider-1 and ldap-provider-2; consumers need only the CA). Replication binds as
# cn=replicator over StartTLS, checking that certificate. Passwords are stored as {ARGON2} hashes; the
# rootdn's is random per start and never written in clear (repairs: slapcat/slapadd in the container).
set -eu
# (the replicator password is substituted with sed: keep it to letters, digits, - and _)
# (paths overridable for the test suite, which renders, seeds and slaptests this on the build machine)
base=${ANNUAIRE_DIR:-/opt/annuaire}
run=${RUN_DIR:-/run/slapd}
data=${DATA_DIR:-/var/lib/annuaire-ldap/data}
secrets=${SECRETS_DIR:-/run/secrets}
conf=$run/slapd.conf
suffix="o=sante,c=fr"
mkdir -p "$run" "$data"
argon2() { printf '%s' "$1" | slappasswd -o module-path=/usr/lib/ldap -o module-load=argon2 -h '{ARGON2}' -T /dev/stdin; }
replicator_pw=$(cat "$secrets/ldap-replicator-password")
root_pw=$(argon2 "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')")
case "$ROLE" in
  provider) addon=$base/deploy/slapd/replication/multi-provider.conf ;;
  consumer) addon=$base/deploy/slapd/replication/consumer.conf ;;
  *) echo "ROLE must be provider or consumer" >&2; exit 2 ;;
esac
render() {
  # global part of the add-on before "database", its database part at the end
  awk -v addon="$addon" '
    BEGIN { while ((getline line < addon) > 0) { if (line ~ /^# -- database --/) { db = 1; continue }
            if (db) dbpart = dbpart line "\n"; else globalpart = globalpart line "\n" } }
    /^database/ && !done { printf "%s\n", globalpart; done = 1 }
    { print }
    END { printf "\n%s", dbpart }' "$base/deploy/slapd/provider.conf"
}
fill() {
  sed -e "s#@SCHEMA_DIR@#/etc/ldap/schema#g" -e "s#@ANNUAIRE_SCHEMA_DIR@#$base/schema#g" \
    -e "s#@RUN_DIR@#$run#g" -e "s#@MODULE_DIR@#/usr/lib/ldap#g" -e "s#@SUFFIX@#$suffix#g" \
    -e "s#@ROOT_DN@#cn=admin,$suffix#g" -e "s#@ROOT_PW@#$root_pw#g" \
    -e "s#@DATA_DIR@#$data#g" -e "s#@SERVICE_DN@#cn=annuaire,$suffix#g" \
    -e "s#@REPLICATOR_DN@#cn=replicator,$suffix#g" -e "s#@REPLICATOR_PW@#$replicator_pw#g" \
    -e "s#@PROVIDER1_URL@#ldap://ldap-provider-1/#g" -e "s#@PROVIDER2_URL@#ldap://ldap-provider-2/#g" \
    -e "s#@TLS_CA_FILE@#$secrets/ldap-ca#g" -e "s#@TLS_CERT_FILE@#$secrets/ldap-tls-certificate#g" \
    -e "s#@TLS_KEY_FILE@#$secrets/ldap-tls-key#g" -e "s#@ORGANIZATION@#sante#g" "$@"
}
render | fill > "$conf"
chmod 600 "$conf"
slaptest -u -f "$conf"
if [ "$ROLE" = provider ] && [ ! -e "$data/data.mdb" ]; then
  # first start: the suffix and the two accounts, the same entries on both providers (deploy/slapd/seed.ldif)
  service_hash=$(argon2 "$(cat "$secrets/ldap-password")")
  replicator_hash=$(argon2 "$replicator_pw")
  fill -e "s#@SERVICE_PW_HASH@#$service_hash#g" -e "s#@REPLICATOR_PW_HASH@#$replicator_hash#g" \
    "$base/deploy/slapd/seed.ldif" | slapadd -w -b "$suffix" -f "$conf"
fi
[ -z "${CHECK_ONLY:-}" ] || exit 0
exec slapd -d 0 -f "$conf" -h "$SELF_URL"
