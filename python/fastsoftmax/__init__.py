"""fastsoftmax: fast CPU training of softmax retrieval models and weighted matrix factorisation.

The heavy lifting happens in a C++ core (``fastsoftmax._core``) with its own thread pool; this
package is a thin, typed, documented API over it.
"""

from __future__ import annotations

from . import _core, datasets, metrics
from .evaluation import evaluate
from .retrieval import topk
from .sampler import AliasSampler

__version__: str = _core.__version__

__all__ = ["AliasSampler", "__version__", "datasets", "evaluate", "metrics", "topk"]
