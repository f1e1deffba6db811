# The service image: the project and its Python dependencies; the PKCS#11 module of the HSM is mounted.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssl ldap-utils && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home-dir /var/lib/annuaire --create-home annuaire
WORKDIR /opt/annuaire
COPY pyproject.toml README.md ./
COPY directory ./directory
COPY ocsp ./ocsp
COPY schema ./schema
COPY deploy ./deploy
RUN pip install --no-cache-dir .
USER annuaire
EXPOSE 8080 8443
