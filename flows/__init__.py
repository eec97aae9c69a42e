"""Prefect flows, deployments and the ``mcl`` command line."""
