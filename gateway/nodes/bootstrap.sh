#!/bin/sh
# RemoteGPU node bootstrap: spends this node's one-time token at the gateway for its Salt minion keys (pre-accepted
# on the master), the master's public key and fingerprint, and the minion's configuration, then (re)starts
# salt-minion. Run as root:  REMOTEGPU_URL=... REMOTEGPU_NODE=... REMOTEGPU_TOKEN=... sh bootstrap.sh
# REMOTEGPU_SALT_DIR writes somewhere else than /etc/salt (and starts nothing).
set -eu
: "${REMOTEGPU_URL:?REMOTEGPU_URL is not set}"
: "${REMOTEGPU_NODE:?REMOTEGPU_NODE is not set}"
: "${REMOTEGPU_TOKEN:?REMOTEGPU_TOKEN is not set}"
case "$REMOTEGPU_NODE" in *[!a-z0-9-]*|'') echo "bootstrap: bad node name" >&2; exit 2;; esac
case "$REMOTEGPU_TOKEN" in *[!a-z0-9.-]*|'') echo "bootstrap: bad token" >&2; exit 2;; esac
SALT_DIR="${REMOTEGPU_SALT_DIR:-/etc/salt}"
command -v python3 >/dev/null 2>&1 || { echo "bootstrap: python3 is needed" >&2; exit 2; }
umask 077
answer=$(mktemp)
trap 'rm -f "$answer"' EXIT INT TERM
printf '{"node":"%s","token":"%s"}' "$REMOTEGPU_NODE" "$REMOTEGPU_TOKEN" |
  curl -fsS -X POST -H 'Content-Type: application/json' --data-binary @- \
    -o "$answer" "${REMOTEGPU_URL%/}/api/v1/nodes/bootstrap" ||
  { echo "bootstrap: the gateway refused the token (expired, used, or not this node's): ask for a new command" >&2; exit 1; }
python3 - "$answer" "$SALT_DIR" <<'PY'
import json, os, sys
answer, root = sys.argv[1], os.path.abspath(sys.argv[2])
with open(answer) as handle:
    got = json.load(handle)
for item in got["files"]:
    path = os.path.abspath(os.path.join(root, item["path"]))
    if not path.startswith(root + os.sep):
        sys.exit("bootstrap: refusing a path outside " + root)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(item["content"])
    os.chmod(tmp, int(item["mode"], 8))
    os.replace(tmp, path)
print("bootstrap: minion %s, master %s:%s, master_finger %s" % (
    got["minion_id"], got["master"], got["master_port"], got["master_finger"]))
PY
if [ -z "${REMOTEGPU_SALT_DIR:-}" ] && command -v systemctl >/dev/null 2>&1; then
  systemctl enable salt-minion >/dev/null 2>&1 || true
  systemctl restart salt-minion
fi
