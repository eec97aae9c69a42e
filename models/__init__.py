"""Torch + adapters only: encoders, the relevance model, fusion-attention capture, losses, training.

Nothing here imports Prefect or MLflow, and nothing does I/O beyond saving and loading model folders.
"""
