# claude-bottle: one file, tested against a fake docker (unit) and the real engine (e2e).
PYTHON ?= python3
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib/claude-bottle
DESTDIR ?=
VERSION = $(shell $(PYTHON) ./claude_bottle.py --version | cut -d' ' -f2)

.PHONY: test unit e2e images lint bench install version

# Unit tests (fake docker) and end-to-end tests (real engine; images built when missing), after installing the
# Debian packages they need that are missing (tests/prereqs.sh; CLAUDE_BOTTLE_NO_INSTALL=1 installs nothing).
# Each test module is a process of its own, three at a time (tests/run.py; TEST_JOBS=1 runs them one by one): the
# end-to-end modules mostly wait for the engine. One module alone: python3 -m unittest tests.test_cli
test:
	sh tests/prereqs.sh
	$(PYTHON) tests/run.py $(TESTFLAGS)

unit: export CLAUDE_BOTTLE_E2E = 0
unit:
	$(PYTHON) tests/run.py --unit $(TESTFLAGS)

e2e:
	$(PYTHON) -m unittest discover -s tests/e2e -t . -p 'test_*.py' $(TESTFLAGS)

images:
	$(PYTHON) tests/e2e/images.py

lint:
	$(PYTHON) -m py_compile claude_bottle.py
	$(PYTHON) tests/lint.py

bench:
	$(PYTHON) bench/bench.py

# The file goes beside its compiled bytecode, run by a three-line launcher: a script is compiled at every run (about
# 100 ms of each command for 5,000 lines), an imported module is not. The launcher names the interpreter that
# compiled it (no PATH lookup, no shim). Copying claude_bottle.py alone still works as before.
install:
	install -Dm0644 claude_bottle.py $(DESTDIR)$(LIBDIR)/claude_bottle.py
	$(PYTHON) -m compileall -q -d $(LIBDIR) $(DESTDIR)$(LIBDIR)/claude_bottle.py
	install -d $(DESTDIR)$(PREFIX)/bin
	printf '%s\n' "#!$$($(PYTHON) -c 'import sys; print(sys.executable)')" \
	  'import signal, sys' \
	  'for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)' \
	  'sys.path.insert(0, "$(LIBDIR)")' \
	  'from claude_bottle import main' \
	  'raise SystemExit(main())' > $(DESTDIR)$(PREFIX)/bin/claude-bottle
	chmod 0755 $(DESTDIR)$(PREFIX)/bin/claude-bottle

version:
	@echo $(VERSION)
