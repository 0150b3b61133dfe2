# Shared by deploy/dev/s3/{up,down,status}. Source it after ../lib/common.sh; do not run it.
# shellcheck shell=bash
S3_ROOT="$DEV_STATE/s3"   # credentials, s3.json (the identity), env.sh, and one directory per store
S3_STORES=(local public)

store_pid() {
    # store_pid NAME: the PID of store NAME's weed, while it runs (its pid file and its command line agree)
    local pid
    pid="$(cat "$S3_ROOT/$1/weed.pid" 2>/dev/null)" && [ -n "$pid" ] && pid_running "$pid" &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " mini -dir=$S3_ROOT/$1/data " && echo "$pid"
}

store_ports() {
    # store_ports NAME: every port store NAME was last started with, as weed recorded them (data/mini.options),
    # plus its admin gRPC port (admin port + 10000)
    local options="$S3_ROOT/$1/data/mini.options"
    [ -f "$options" ] || return 0
    sed -n 's/^[a-z.]*port[a-z.]*=\([0-9][0-9]*\)$/\1/p' "$options"
    sed -n 's/^admin\.port=\([0-9][0-9]*\)$/\1/p' "$options" | while read -r port; do echo $((port + 10000)); done
}

remove_stray_sockets() {
    # remove_stray_sockets NAME: the unix sockets a stopped store NAME leaves in /tmp (weed names them by port)
    local port sock
    for port in $(store_ports "$1"); do
        for sock in /tmp/seaweedfs-*-"$port".sock; do [ -S "$sock" ] && rm -f "$sock"; done
    done
    for sock in "$S3_ROOT/$1"/{s3,filer}.sock; do [ -S "$sock" ] && rm -f "$sock"; done
    return 0
}
