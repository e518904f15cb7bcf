"""Cluster: typed config, CLI, the driver loop, Ray placement and metrics."""
