PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test test-unit lint typecheck bench bench-service clean deb test-system apt-install

$(STAMP): pyproject.toml tools/bootstrap.sh
	PYTHON=$(PYTHON) tools/bootstrap.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeward demo

test: lint
	$(BIN)/python -m pytest -q
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) test-system; \
	else echo "make test: skipped make test-system, which needs root"; fi

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check src tests systemtests benchmarks tools
	$(BIN)/ruff format --check src tests systemtests benchmarks tools
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/uplink.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build src/*.egg-info

# The Debian package, built with dh-virtualenv; the .deb lands in dist/.
DEB_BUILD_DEPS = debhelper dh-virtualenv dpkg-dev libsystemd-dev pkg-config python3-dev python3-venv lintian

deb:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_BUILD_DEPS)"
	rm -rf build/deb dist/edgeward*.deb && mkdir -p build/deb/src dist
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -d -t build/deb/src
	cd build/deb/src && dpkg-buildpackage -us -uc -b
	mv build/deb/*.deb dist/
	lintian --fail-on error,warning dist/edgeward_*.deb

# The package under a real systemd: a debootstrapped Debian 12 root
# filesystem (cached in /var/cache/edgeward-systemtest) booted with
# systemd-nspawn. Needs root.
SYSTEM_TEST_DEPS = debootstrap systemd-container

test-system: $(STAMP) deb
	@if [ "$$(id -u)" != 0 ]; then echo "make test-system needs root (debootstrap, systemd-nspawn)"; exit 1; fi
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(SYSTEM_TEST_DEPS)"
	$(BIN)/python -m pytest -q systemtests

# Inference inside the hardened unit against outside it, in the test container.
bench-service: $(STAMP) deb
	$(BIN)/python benchmarks/hardened.py

# Install the Debian packages in PACKAGES that are missing, when run as root.
apt-install:
	@missing=""; for package in $(PACKAGES); do \
		dpkg-query -W -f '$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing; run 'sudo apt-get install$$missing'" >&2; exit 1; fi; \
		echo "installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi
