# annuaire: the two commands are `make run` and `make test`. Every target sets up what it needs
# (Debian packages, .venv, the project) and is safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= var/demo
HTTP_PORT ?= 8080
LDAP_PORT ?= 3890
ADMIN_PORT ?= 8443
# Debian packages by use. A production host gets only the runtime ones (`make deps`; see deploy/README.md):
# slapd (the managed slapd, or a provider on the same host), ldap-utils and opensc (pkcs11-tool) and
# openssl for the operator's checks. SoftHSM2 is the demo's and the tests' HSM, never production's;
# gnutls-bin (ocsptool) and chromium drive tests, wrk the benchmarks; golang-cfssl (cfssl ocspserve) is the
# OCSP benchmark's peer. The tests run every benchmark at its tiny size, so they need wrk and cfssl too.
DEB_PACKAGES := slapd ldap-utils opensc openssl
DEMO_DEB_PACKAGES := softhsm2
# tpm2-pkcs11 over a software TPM (swtpm, tpm2-abrmd on a private D-Bus): the second PKCS#11 module of the tests
TPM2_DEB_PACKAGES := libtpm2-pkcs11-1 libtpm2-pkcs11-tools libtss2-tcti-tabrmd0 swtpm tpm2-abrmd tpm2-tools dbus
TEST_DEB_PACKAGES := $(DEMO_DEB_PACKAGES) gnutls-bin chromium chromium-driver wrk golang-cfssl $(TPM2_DEB_PACKAGES)
BENCH_DEB_PACKAGES := $(DEMO_DEB_PACKAGES) wrk golang-cfssl $(TPM2_DEB_PACKAGES)
STAMP := $(VENV)/.installed

# The Python packages, pinned with their hashes (pip-compile of pyproject.toml; `make lock` regenerates them):
# dev.txt is what .venv gets (runtime, the postgresql extra, dev tools, pip and setuptools); runtime.txt what
# the service image gets; build.txt what building the wheel needs.
REQUIREMENTS := requirements/dev.txt
LOCK := env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null \
	CUSTOM_COMPILE_COMMAND="make lock" \
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: run test bench lint ruff audit deps system-packages demo-packages test-packages bench-packages venv demo clean lock

run: demo
	$(BIN)/annuaire --log-format human serve --config $(DEMO_DIR)/annuaire.toml

test: test-packages deps
	$(BIN)/pytest -q --durations=15

bench: bench-packages deps
	$(BIN)/python -m bench.hsm
	$(BIN)/python -m bench.hsm_tpm2
	$(BIN)/python -m bench.importer
	$(BIN)/python -m bench.crl
	$(BIN)/python -m bench.ocsp
	$(BIN)/python -m bench.ocsp_nonce
	$(BIN)/python -m bench.ocsp_workers
	$(BIN)/python -m bench.ocsp_answer
	$(BIN)/python -m bench.ldap
	$(BIN)/python -m bench.ldif
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.fuzz
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.check

# ruff, then the dependency audit (known vulnerabilities, from PyPI's advisory data; needs pypi.org).
# --strict: a dependency that could not be looked up fails the audit instead of passing it silently.
# CI (.ci/run) runs both too; where the advisory data cannot be reached it reports the audit as SKIPPED.
lint: ruff audit

ruff: deps
	$(BIN)/ruff check .

audit: deps
	$(BIN)/pip-audit --strict --skip-editable --progress-spinner off

deps: system-packages venv

# Debian packages, installed non-interactively when one is missing. The slapd package may start a
# system slapd on port 389: it does not matter, ours run on their own ports with their own config.
# The test suite also drives Debian's chromium (the publication page test) through chromedriver, and a second
# PKCS#11 module beside SoftHSM2: tpm2-pkcs11 over a software TPM (swtpm, tpm2-abrmd on a private D-Bus).
define install_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

system-packages:
	$(call install_missing,$(DEB_PACKAGES))

demo-packages:
	$(call install_missing,$(DEB_PACKAGES) $(DEMO_DEB_PACKAGES))

test-packages:
	$(call install_missing,$(DEB_PACKAGES) $(TEST_DEB_PACKAGES))

bench-packages:
	$(call install_missing,$(DEB_PACKAGES) $(BENCH_DEB_PACKAGES))

venv: $(STAMP)

# Every third-party package at its locked version, each file checked against its hash (pip and setuptools
# included); then the project itself, editable: pip cannot hash a source tree (it refuses `-e .` in
# hash-checking mode, even with hashes given only as constraints), so it goes in without dependencies,
# all of them installed just before, and `pip check` proves none is missing.
$(STAMP): pyproject.toml $(REQUIREMENTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(REQUIREMENTS)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# Resolve pyproject.toml again against the public index alone (whatever mirrors pip is configured with
# here), newest versions within the floors, every file's hash recorded.
lock:
	test -x $(BIN)/pip-compile || $(MAKE) --no-print-directory venv
	$(LOCK) --extra postgresql --extra dev --all-build-deps -o requirements/dev.txt pyproject.toml
	$(LOCK) --extra postgresql -o requirements/runtime.txt pyproject.toml
	$(LOCK) --all-build-deps --only-build-deps -o requirements/build.txt pyproject.toml

demo: demo-packages deps
	test -f $(DEMO_DIR)/annuaire.toml || $(BIN)/annuaire init-demo $(DEMO_DIR) --http-port $(HTTP_PORT) --ldap-port $(LDAP_PORT) --admin-port $(ADMIN_PORT)

clean:
	rm -rf $(VENV) var .pytest_cache
