#!/bin/sh
# The Debian packages the tests need, and the step `make test` runs first: install the missing ones.
#
#   sh tests/prereqs.sh           install what is missing (apt-get, as root or with passwordless sudo), then exit 0
#   sh tests/prereqs.sh --check   install nothing; exit 2 naming what is missing, else 0
#   sh tests/prereqs.sh --list    the package names, one a line
#
# CLAUDE_BOTTLE_NO_INSTALL=1 installs nothing (a test whose tool is missing then skips, or fails when CI is set).
# When it cannot install (not root and no passwordless sudo, or no dpkg-query and apt-get), it names the packages in
# one line and exits 2, so `make test` stops before running anything.
#
# Only shell built-ins and id, dpkg-query, apt-get, sudo and env, looked up on PATH (tests/test_fresh.py fakes them).
set -eu

# One line a package: its name, then what needs it. This is the only list: .ci/run runs `make test`, which runs this.
names=""
while read -r name _; do
    case $name in ''|'#'*) ;; *) names="$names $name" ;; esac
done <<'PACKAGES'
debootstrap       e2e/images.py: the Debian root of the end-to-end images
python3-yaml      the pipelock stand-in (e2e/standin/pipelock, test_standin.py)
socat             the relay of the bottle's SSH ProxyCommand, a real client the tests drive
openssh-client    ssh, ssh-keygen, ssh-agent: SSH config checks and git over SSH (e2e/test_ssh.py)
tmux              a real terminal for the y/N prompt (test_clients.py)
pre-commit        the claude-bottle-check hook run by pre-commit (test_clients.py)
make              `make test` itself (.ci/run runs this script first when make is missing)
git               test_fresh.py clones the repository; pre-commit and the SSH tests need it
busybox-static    a static busybox for the test images
openssl           certificates for the TLS test servers
dpkg-dev          dpkg-scanpackages, for a local Debian package archive in the tests
apt-utils         apt-ftparchive, for a local Debian package archive in the tests
python3-pyflakes  `make lint` (tests/lint.py): pyflakes
pyflakes3         `make lint`: the pyflakes3 command it runs
ca-certificates   HTTPS for apt, debootstrap and curl
curl              probes of the test servers from the host (e2e/test_security.py)
strace            e2e/test_remote_rig.py: every file the docker CLI's ssh touches, none in ~/.ssh
procps            ps: test_lifecycle.py reads a start time without /proc
PACKAGES
names=${names# }
SKIP_HINT="CLAUDE_BOTTLE_NO_INSTALL=1 make test"

mode=${1:-install}
case $mode in
    --list) for name in $names; do echo "$name"; done; exit 0 ;;
    --check|install) ;;
    *) echo "prereqs: unknown argument $mode (use --check or --list)" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    [ "${CLAUDE_BOTTLE_NO_INSTALL:-0}" = 1 ] && [ "$mode" = install ] && exit 0
    echo "prereqs: no dpkg-query and apt-get here; install these packages or their equivalents: $names;" \
         "then run $SKIP_HINT" >&2
    exit 2
fi

missing=""
for name in $names; do
    case $(dpkg-query -W -f='${Status}' "$name" 2>/dev/null || true) in
        *" ok installed") ;;
        *) missing="$missing $name" ;;
    esac
done
missing=${missing# }
[ -z "$missing" ] && exit 0

if [ "$mode" = --check ]; then
    echo "prereqs: missing: $missing" >&2
    exit 2
fi
if [ "${CLAUDE_BOTTLE_NO_INSTALL:-0}" = 1 ]; then
    echo "prereqs: not installing $missing (CLAUDE_BOTTLE_NO_INSTALL=1); the tests that need them skip, or fail under CI"
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    sudo="sudo -n"
else
    echo "prereqs: the tests need $missing; install them as root (apt-get install $missing) and run make test" \
         "again, or run without them: $SKIP_HINT" >&2
    exit 2
fi

echo "prereqs: installing $missing with ${sudo:+sudo }apt-get (to skip: $SKIP_HINT)"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
