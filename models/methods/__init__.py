"""The paper's method, its ablations and classic continual-learning baselines under one protocol.

``run_method(name, ...)`` runs any of ``METHODS`` over a sequence of marketplaces under
:func:`models.methods.protocol.run_protocol` (the same loop ``mcl train-sequence`` uses) and returns its
ROC-AUC matrix, time per arrival and parameter counts. The adapter-based methods live in
``adapter_fusion`` (the paper's learner among them), full fine-tuning ones in ``fine_tuning`` (on
``full_model``, with EWC/LwF losses in ``regularizers``), HAT in ``hat``.
"""

from models.methods.catalog import METHOD_PRESETS, METHODS, describe_method, method_class, run_method
from models.methods.protocol import ContinualMethod, MarketplaceSplits, MethodResult, TranslatedFor, run_protocol

__all__ = ["METHODS", "METHOD_PRESETS", "ContinualMethod", "MarketplaceSplits", "MethodResult", "TranslatedFor",
           "describe_method", "method_class", "run_method", "run_protocol"]
