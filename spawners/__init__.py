"""JupyterHub side of RemoteGPU: the batchspawner-based GatewaySpawner (added with the environments issue)."""
