"""fastsoftmax: fast CPU training of softmax retrieval models and weighted matrix factorisation.

The heavy lifting happens in a C++ core (``fastsoftmax._core``) with its own thread pool; this
package is a thin, typed, documented API over it.
"""

from __future__ import annotations

from . import _core
from .sampler import AliasSampler
from .softmax import QueryFeatures, SoftmaxModel

__version__: str = _core.__version__

__all__ = ["AliasSampler", "QueryFeatures", "SoftmaxModel", "__version__"]
