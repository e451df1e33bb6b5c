#!/usr/bin/env bash
# hakit bootstrap: install everything hakit needs on a Debian/Ubuntu machine, then run the demo or
# the test suite.
#
#   ./bootstrap.sh demo     install, then run the narrated lab demo
#   ./bootstrap.sh test     install, then run lint, type checks and the whole test suite
#   ./bootstrap.sh install  install only
#   ./bootstrap.sh package  build the Debian package, dist/hakit_VERSION_ARCH.deb (docs/install.md)
#
# Must run as root (it installs Debian packages, and the lab creates network namespaces).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
action="${1:-install}"
shift || true

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
die() { printf '\033[1;31mbootstrap: %s\033[0m\n' "$*" >&2; exit 1; }

case "$action" in
  demo|test|install|package) ;;
  *) die "unknown action '$action' (expected: demo, test, install or package)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root: the lab needs network namespaces and packages must be installed"

# --- Debian packages ------------------------------------------------------------------------------
# iproute2: ip netns / veth / bridges / bridge fdb; nftables: lab partitions and the farm filter;
# util-linux: nsenter / unshare for the lab's mount namespaces; procps, psmisc: process tools;
# fuse3, libfuse3-3: the replication layer (FUSE mount over replicated directories).
# nginx: the shipped example farm-web (and the demo and tests that run it).
# The tests also run the module templates with the real applications: nginx and apache2 (web
# farms), MariaDB, podman (a busybox-static image built at test time) and a qemu virtual
# machine (a guest made at test time from Debian's kernel and busybox; socat talks to its QMP).
debs=(iproute2 nftables util-linux procps psmisc iputils-ping ca-certificates fuse3 libfuse3-3
      nginx)
# The Debian package's build (packaging/build-deb): Debian's Python, dh-virtualenv, debhelper.
build_debs=(python3 python3-venv dpkg-dev debhelper dh-virtualenv build-essential)
[ "$action" = package ] && debs=("${build_debs[@]}")
# The tests also replicate a real database (PostgreSQL, Debian's package), build, install and
# remove the Debian package (tests/package), rotate logs as it does (logrotate) and scrape the
# nodes' /metrics with a real Prometheus (prometheus: also promtool, which checks the shipped
# alert rules). The console's browser tests drive Debian's Chromium (Playwright cannot download
# browsers).
[ "$action" = test ] && debs+=(postgresql postgresql-contrib "${build_debs[@]}" logrotate
                               prometheus chromium apache2 mariadb-server mariadb-client
                               podman busybox-static qemu-system-x86 linux-image-amd64 socat
                               etcd-server etcd-client)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# A Python >= 3.11 with venv support.
pick_python() {
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  return 1
}
py="$(pick_python || true)"
if [ "$action" = package ]; then
  :  # the package is built with Debian's own /usr/bin/python3
elif [ -z "$py" ]; then
  missing+=(python3 python3-venv python3-pip)
elif ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=("python3-venv")
  minor="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  missing+=("python${minor}-venv")
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # pythonX.Y-venv may not exist under that name on every release: install what exists.
  avail=()
  for p in "${missing[@]}"; do
    apt-cache show "$p" >/dev/null 2>&1 && avail+=("$p")
  done
  apt-get install -y -qq --no-install-recommends "${avail[@]}" >/dev/null
fi
if [ "$action" = package ]; then
  say "building the Debian package"
  exec "$here/packaging/build-deb" "$@"
fi
py="$(pick_python)" || die "no Python >= 3.11 found after installing packages"

# --- Python virtualenv ----------------------------------------------------------------------------
venv="$here/.venv"
stamp="$venv/.hakit-installed"
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtualenv $venv with $py"
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing hakit and its Python dependencies into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
ln -sf "$venv/bin/hakit" /usr/local/bin/hakit
say "hakit $("$venv/bin/hakit" --version) installed (command: /usr/local/bin/hakit)"

case "$action" in
  install) ;;
  demo)
    exec "$venv/bin/hakit" lab demo "$@"
    ;;
  test)
    say "ruff"
    "$venv/bin/ruff" check src tests bench
    "$venv/bin/ruff" format --check src tests bench
    say "mypy"
    "$venv/bin/mypy"
    say "generated documentation is up to date"
    "$venv/bin/python" -m hakit.tools.gendocs --check
    say "pytest (2 workers; \`-n 0\` runs it in one process, e.g. for --pdb)"
    exec "$venv/bin/python" -m pytest -n 2 --dist loadgroup "$@"
    ;;
esac
