"""The cluster as the poller last saw it: nodes, partitions, GPU types and free counts."""
