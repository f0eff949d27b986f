"""fastsoftmax: fast CPU training of softmax retrieval models and weighted matrix factorisation.

The heavy lifting happens in a C++ core (``fastsoftmax._core``) with its own thread pool; this
package is a thin, typed, documented API over it.
"""

from __future__ import annotations

from . import _core, datasets, hashing, metrics
from .baselines import Popularity
from .config import show_config
from .evaluation import evaluate
from .io import load, register_model
from .ivf_index import ExactIndex, IVFIndex, build_index
from .retrieval import topk
from .sampler import AliasSampler
from .softmax import QueryFeatures, SoftmaxModel
from .wals import WALS

__version__: str = _core.__version__

__all__ = [
    "WALS",
    "AliasSampler",
    "ExactIndex",
    "IVFIndex",
    "Popularity",
    "QueryFeatures",
    "SoftmaxModel",
    "__version__",
    "build_index",
    "datasets",
    "evaluate",
    "hashing",
    "load",
    "metrics",
    "register_model",
    "show_config",
    "topk",
]
