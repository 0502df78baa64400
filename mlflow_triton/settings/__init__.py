"""The deployment configuration: every ``-C`` key with its default and validation, and target URIs.
"""
