"""GPU nodes: registration, bootstrap tokens, provisioning through salt-api, drain and resume."""
