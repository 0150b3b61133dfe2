# Shared by deploy/dev/salt/{up,down,status}. Source it after ../lib/common.sh; do not run it.
# shellcheck shell=bash
SALT_ROOT="${REMOTEGPU_SALT_ROOT:-/var/tmp/remotegpu-salt}"  # venv, wheels, etc/, the daemons' root_dirs
SALT_VERSION=3008.3   # 3008.4+ need a certifi newer than the index has (shared/notes/salt.md §1)
SALT_VENV="$SALT_ROOT/venv"
SALT_PUBLISH_PORT="${REMOTEGPU_SALT_PUBLISH_PORT:-10505}"
SALT_RET_PORT="${REMOTEGPU_SALT_RET_PORT:-10506}"
SALT_API_PORT="${REMOTEGPU_SALT_API_PORT:-10800}"
SALT_API_URL="http://127.0.0.1:$SALT_API_PORT"
SALT_API_USER=remotegpu
# the dev minions: n1 n2, or REMOTEGPU_SALT_MINIONS="n1 n2 n3 ..." (a benchmark's; up records the list in
# $SALT_ROOT/minions, and down and status use that record)
if [ -n "${REMOTEGPU_SALT_MINIONS:-}" ]; then
    read -ra SALT_MINIONS <<<"$REMOTEGPU_SALT_MINIONS"
elif [ -s "$SALT_ROOT/minions" ]; then
    read -ra SALT_MINIONS <"$SALT_ROOT/minions"
else
    SALT_MINIONS=(n1 n2)
fi
for _id in "${SALT_MINIONS[@]}"; do
    [[ $_id =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || { echo "error: bad minion id '$_id' (a-z 0-9 -)" >&2; exit 1; }
done
# Salt prefixes a daemon's paths with its root_dir: each daemon's pid file and log live under it
salt_dir() {  # salt_dir NAME (master, api, minion-n1, ...): the daemon's root_dir
    case $1 in master | api) echo "$SALT_ROOT/master" ;; minion-*) echo "$SALT_ROOT/nodes/${1#minion-}/salt" ;; esac
}
salt_pidfile() {  # salt_pidfile NAME
    case $1 in minion-*) echo "$(salt_dir "$1")/var/run/salt-minion.pid" ;; *) echo "$(salt_dir "$1")/var/run/salt-$1.pid" ;; esac
}
salt_log() {  # salt_log NAME
    case $1 in minion-*) echo "$(salt_dir "$1")/var/log/salt/minion" ;; *) echo "$(salt_dir "$1")/var/log/salt/$1" ;; esac
}

salt_pid() {
    # salt_pid NAME: the PID of daemon NAME (master, api, minion-n1, ...) while it runs: its pid file names a live
    # process whose command line is that salt daemon with this stack's config dir (never someone else's process)
    local name=$1 pid prog conf
    case $name in
        master) prog=salt-master conf="$SALT_ROOT/etc/master" ;;
        api) prog=salt-api conf="$SALT_ROOT/etc/master" ;;
        minion-*) prog=salt-minion conf="$SALT_ROOT/etc/${name#minion-}" ;;
        *) return 1 ;;
    esac
    pid="$(cat "$(salt_pidfile "$name")" 2>/dev/null)" && [ -n "$pid" ] && pid_running "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$prog -c $conf " && echo "$pid"
}

descendants() {  # descendants PID: the PIDs of PID's children, grandchildren, ...
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}

salt_stop() {
    # salt_stop NAME: SIGTERM to the daemon's main process (it stops its own workers), then wait up to 20 s for it and
    # every process under it to be gone; what is left gets SIGKILL, by PID
    local name=$1 pid pids left
    pid="$(salt_pid "$name")" || { rm -f "$(salt_pidfile "$name")"; return 0; }
    pids="$pid $(descendants "$pid" | tr '\n' ' ')"
    say "stopping salt $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        left=""; for p in $pids; do pid_running "$p" && left+="$p "; done
        [ -z "$left" ] && break
        sleep 0.2
    done
    for p in $left; do kill -9 "$p" 2>/dev/null || true; done
    rm -f "$(salt_pidfile "$name")"
}
