# claude-bottle: one file, tested against a fake docker (unit) and the real engine (e2e).
PYTHON ?= python3
PREFIX ?= /usr/local
DESTDIR ?=
VERSION = $(shell $(PYTHON) ./claude_bottle.py --version | cut -d' ' -f2)

.PHONY: test unit e2e images lint bench install version

# Unit tests (fake docker) and end-to-end tests (real engine; images built when missing), after installing the
# Debian packages they need that are missing (tests/prereqs.sh; CLAUDE_BOTTLE_NO_INSTALL=1 installs nothing).
test:
	sh tests/prereqs.sh
	$(PYTHON) -m unittest discover -s tests -t . -p 'test_*.py' $(TESTFLAGS)

unit: export CLAUDE_BOTTLE_E2E = 0
unit:
	$(PYTHON) -m unittest discover -s tests -t . -p 'test_*.py' $(TESTFLAGS)

e2e:
	$(PYTHON) -m unittest discover -s tests/e2e -t . -p 'test_*.py' $(TESTFLAGS)

images:
	$(PYTHON) tests/e2e/images.py

lint:
	$(PYTHON) -m py_compile claude_bottle.py
	$(PYTHON) tests/lint.py

bench:
	$(PYTHON) bench/bench.py

install:
	install -Dm0755 claude_bottle.py $(DESTDIR)$(PREFIX)/bin/claude-bottle

version:
	@echo $(VERSION)
