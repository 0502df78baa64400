"""The Triton model repository: stores (S3, local), its layout, the lease, the serving history,
provenance, snapshots, and moving bytes into it (copy, stream, download) and out of MLflow.
"""
