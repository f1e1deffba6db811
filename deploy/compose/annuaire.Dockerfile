# The service image: the annuaire wheel and its locked, hash-checked dependencies (requirements/runtime.txt,
# psycopg included: the nodes share a PostgreSQL registry); the PKCS#11 module of the HSM is mounted.
# Built from the repository root (compose.yaml's context). The schema and slapd templates are package data
# of the wheel (directory/ldap/shipped/ links to schema/ and deploy/slapd/, whose files the wheel holds).
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY requirements/build.txt requirements/build.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt
COPY pyproject.toml README.md LICENSE ./
COPY schema ./schema
COPY deploy/slapd ./deploy/slapd
COPY directory ./directory
COPY ocsp ./ocsp
RUN pip wheel --no-deps --no-build-isolation -w /wheels .

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssl ldap-utils && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home-dir /var/lib/annuaire --create-home annuaire
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/annuaire-*.whl && rm -rf /tmp/wheels && pip check
USER annuaire
WORKDIR /var/lib/annuaire
EXPOSE 8080 8443
