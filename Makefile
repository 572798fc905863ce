# Developer entry points.  `make demo` and `make check` are the README's
# quick start; `make check` is also what CI runs (.ci/run).  Both install
# what is missing first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the test tiers need: a real Dovecot (tunnels and a
# daemon on 127.0.0.1), openssl for fingerprint checks, interimap for the
# differential tests, groff for the manual page check, GNU time for
# benchmarks/sync.py.
DEBS := dovecot-imapd openssl interimap groff-base time

.PHONY: demo check test deps system-deps lint mypy bench deb-check clean

check: deps
	$(PY) -b -m twisted.trial --temp-directory=_trial_temp tests

test: check

# Two throwaway Dovecot stores synced by the real command (demo/run.py);
# `make demo DEMO_ARGS=--keep` keeps them.
demo: deps
	$(PY) demo/run.py $(DEMO_ARGS)

deps: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(DEBS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "Installing:$$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    else \
	        echo "Missing Debian packages:$$missing (as root: apt-get install$$missing); their tests will be skipped"; \
	    fi; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: the repository root goes on sys.path, so twistd finds
	# twisted/plugins/imapsync_plugin.py from anywhere.
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

mypy: deps
	$(VENV)/bin/mypy imapsync

bench: deps
	$(PY) benchmarks/parse.py

# The Debian package (debian/): built from a scratch copy of the tree
# (tracked and untracked files, not ignored ones), checked by lintian; as
# root also installed, smoke-tested with debian/tests/smoke (the installed
# command against Dovecot, the twistd plugin) and purged again (removed
# only, a package with a postrm stays listed as "rc").  The build runs in a
# clean environment: the system's python3, as on a buildd, not one that a
# pyenv or virtualenv puts first on PATH.
deb-check:
	@set -eu; \
	start=$$(date +%s); \
	step() { now=$$(date +%s); echo "deb-check: $$1 ($$((now - start)) s)"; start=$$now; }; \
	apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=300 "$$@"; }; \
	root=false; [ "$$(id -u)" != 0 ] || root=true; \
	if $$root; then \
	    apt-get update -qq; \
	    apt_get install --no-install-recommends build-essential debhelper dh-python \
	        pybuild-plugin-pyproject python3-all python3-setuptools python3-hypothesis \
	        python3-packaging lintian python3-twisted python3-openssl \
	        python3-service-identity python3-attr python3-cryptography dovecot-imapd; \
	    step "build dependencies installed"; \
	fi; \
	scratch=$$(mktemp -d /tmp/imapsync-deb-XXXXXX); \
	installed=false; \
	trap 'if $$installed; then apt_get purge imapsync; fi; rm -rf "$$scratch"' EXIT; \
	chmod 755 "$$scratch"; mkdir "$$scratch/src"; \
	git ls-files -z --cached --others --exclude-standard \
	    | tar --null -T - --ignore-failed-read -cf - | tar -C "$$scratch/src" -xf -; \
	(cd "$$scratch/src" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$$scratch" \
	    LANG=C.UTF-8 dpkg-buildpackage -us -uc -b >"$$scratch/build.log" 2>&1) \
	    || { tail -n 200 "$$scratch/build.log"; exit 1; }; \
	step "built $$(cd "$$scratch" && echo imapsync_*.deb)"; \
	lintian --allow-root -I --pedantic --fail-on error "$$scratch"/imapsync_*.changes; \
	step "lintian passed"; \
	if dpkg-deb -c "$$scratch"/imapsync_*.deb | grep dropin.cache; then \
	    echo "deb-check: the package must not ship a Twisted plugin cache"; exit 1; \
	fi; \
	if ! $$root; then echo "deb-check: not root: not installed, no smoke test"; exit 0; fi; \
	installed=true; apt_get install --no-install-recommends "$$scratch"/imapsync_*.deb; \
	step "installed"; \
	(cd "$$scratch/src" && /usr/bin/python3 debian/tests/smoke); \
	step "smoke test passed"; \
	installed=false; apt_get purge imapsync; \
	if grep -qs imapsync_plugin /usr/lib/python3/dist-packages/twisted/plugins/dropin.cache; then \
	    echo "deb-check: the plugin cache still lists imapsync after removal"; exit 1; \
	fi; \
	step "purged"

clean:
	rm -rf $(VENV) _trial_temp .tox build *.egg-info twisted/plugins/dropin.cache
