# Developer entry points.  `make demo` and `make check` are the README's
# quick start; `make check` is also what CI runs (.ci/run).  Both install
# what is missing first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the test tiers need: a real Dovecot (tunnels and a
# daemon on 127.0.0.1), openssl for fingerprint checks, interimap for the
# differential tests.
DEBS := dovecot-imapd openssl interimap groff-base

.PHONY: demo check test deps system-deps lint mypy bench clean

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

clean:
	rm -rf $(VENV) _trial_temp .tox build *.egg-info twisted/plugins/dropin.cache
