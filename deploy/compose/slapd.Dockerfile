# A directory node: Debian's slapd with the project's schema and templates; deploy/compose/slapd-entry.sh
# renders provider.conf (+ replication/multi-provider.conf or consumer.conf) for its ROLE and starts it.
FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends slapd ldap-utils && rm -rf /var/lib/apt/lists/*
COPY schema /opt/annuaire/schema
COPY deploy/slapd /opt/annuaire/deploy/slapd
COPY deploy/compose/slapd-entry.sh /usr/local/bin/slapd-entry.sh
EXPOSE 389
ENTRYPOINT ["/usr/local/bin/slapd-entry.sh"]
