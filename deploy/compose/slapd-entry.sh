#!/bin/sh
# Render the slapd configuration of this node from the templates, then run slapd in the foreground.
# ROLE=provider|consumer, SELF_URL=ldap://HOST/ (must match a serverID URL for providers).
set -eu
# (the replicator password is substituted with sed: keep it to letters, digits, - and _)
# (paths overridable for the test suite, which renders and slaptests this on the build machine)
base=${ANNUAIRE_DIR:-/opt/annuaire}
run=${RUN_DIR:-/run/slapd}
data=${DATA_DIR:-/var/lib/annuaire-ldap/data}
conf=$run/slapd.conf
mkdir -p "$run" "$data"
replicator_pw=$(cat "${SECRETS_DIR:-/run/secrets}/ldap-replicator-password")
root_pw=$(slappasswd -s "$replicator_pw")
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
render | sed \
  -e "s#@SCHEMA_DIR@#/etc/ldap/schema#g" -e "s#@ANNUAIRE_SCHEMA_DIR@#$base/schema#g" \
  -e "s#@RUN_DIR@#$run#g" -e "s#@MODULE_DIR@#/usr/lib/ldap#g" -e "s#@SUFFIX@#o=sante,c=fr#g" \
  -e "s#@ROOT_DN@#cn=admin,o=sante,c=fr#g" -e "s#@ROOT_PW@#$root_pw#g" \
  -e "s#@DATA_DIR@#$data#g" -e "s#@SERVICE_DN@#cn=annuaire,o=sante,c=fr#g" \
  -e "s#@REPLICATOR_DN@#cn=admin,o=sante,c=fr#g" -e "s#@REPLICATOR_PW@#$replicator_pw#g" \
  -e "s#@PROVIDER1_URL@#ldap://ldap-provider-1/#g" -e "s#@PROVIDER2_URL@#ldap://ldap-provider-2/#g" > "$conf"
chmod 600 "$conf"
slaptest -u -f "$conf"
[ -z "${CHECK_ONLY:-}" ] || exit 0
exec slapd -d 0 -f "$conf" -h "$SELF_URL"
