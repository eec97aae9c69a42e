"""The paper's method, its ablations and classic continual-learning baselines behind one interface.

``run_method(name, ...)`` runs any of ``METHODS`` over a sequence of marketplaces under the same
protocol as ``models.sequence.learn_sequence`` and returns its ROC-AUC matrix, time per arrival and
parameter counts. Adapter methods live in ``adapter_methods``, full fine-tuning ones in
``full_methods`` (on ``full_model``, with EWC/LwF losses in ``regularizers``), HAT in ``hat``.
"""

from models.baselines.method import ContinualMethod, MethodConfig
from models.baselines.run import METHODS, MethodResult, method_class, run_method
from models.sequence import TranslatedFor

__all__ = ["METHODS", "ContinualMethod", "MethodConfig", "MethodResult", "TranslatedFor", "method_class",
           "run_method"]
