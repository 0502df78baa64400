"""The Triton replicas: one wrapper per server and per cluster (load, unload, readiness, inference),
and discovery of replicas behind ``dns+`` and ``k8s://`` targets.
"""
