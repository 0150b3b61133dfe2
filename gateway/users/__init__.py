"""Users: gateway accounts mapped to POSIX accounts on the cluster."""
