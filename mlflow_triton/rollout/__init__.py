"""Rollouts: publishing a version as one transaction, verifying it under a staging name on every
replica, switching, repairing and pruning. It executes the plans the flavors make and never asks
which flavor a model is.
"""
