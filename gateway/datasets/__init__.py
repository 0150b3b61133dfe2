"""Datasets and models: storage sources, versions, uploads, replicas, sync, routing."""
