"""Options of the sampled softmax and of gravity for :class:`fastsoftmax.SoftmaxModel` (issue 6).

Validated here (messages name the argument), turned into the ``loss_options`` dict that the C++
loss factory (``_bindings/sampled_loss_factory.h``) consumes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_real_array, check_choice, check_int, check_real

__all__ = ["SAMPLERS", "SampledOptions"]

SAMPLERS = ("uniform", "popularity", "weights", "in_batch", "score")


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


class SampledOptions:
    """The validated issue-6 options of a SoftmaxModel (see its docstring)."""

    def __init__(
        self,
        n_items: int,
        *,
        num_negatives: int | None,
        sampler: str,
        sampler_alpha: float,
        sampler_weights: Any,
        share_negatives: bool,
        hard_pool: int | None,
        temperature: float,
        hard_fraction: float,
        logq_correction: bool,
        remove_accidental_hits: bool,
        gravity: float,
        mixed_negatives: int = 0,
        frequency_estimate: str = "counts",
    ) -> None:
        self.sampler = check_choice(sampler, "sampler", SAMPLERS)
        if num_negatives is None:
            # in_batch: every distinct item of the batch; the other samplers: 256 draws.
            self.num_negatives: int | None = None if self.sampler == "in_batch" else 256
        else:
            self.num_negatives = check_int(num_negatives, "num_negatives", minimum=1)
        self.sampler_alpha = check_real(sampler_alpha, "sampler_alpha", minimum=0)
        self.sampler_weights: np.ndarray | None = None
        if sampler_weights is not None:
            if self.sampler not in ("weights", "score"):
                raise ValueError(
                    "sampler_weights: only used with sampler='weights' (or 'score', as the "
                    f"proposal of the candidate pool), got sampler={self.sampler!r}"
                )
            w = as_real_array(sampler_weights, "sampler_weights", dtype=np.float64, ndim=1)
            if len(w) != n_items:
                raise ValueError(
                    f"sampler_weights: expected {n_items} weights (n_items), got {len(w)}"
                )
            if not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
                raise ValueError(
                    "sampler_weights: expected finite, non-negative weights with a positive sum"
                )
            self.sampler_weights = w
        elif self.sampler == "weights":
            raise ValueError("sampler_weights: sampler='weights' needs one weight per item")
        self.share_negatives = _bool(share_negatives, "share_negatives")
        if hard_pool is None:
            self.hard_pool: int | None = None
        else:
            self.hard_pool = check_int(hard_pool, "hard_pool (None = exact)", minimum=1)
            if self.hard_pool >= n_items:  # exact sampling costs no more (documented)
                self.hard_pool = None
        self.temperature = check_real(temperature, "temperature", minimum=0, exclusive_minimum=True)
        self.hard_fraction = check_real(hard_fraction, "hard_fraction", minimum=0, maximum=1)
        self.logq_correction = _bool(logq_correction, "logq_correction")
        self.remove_accidental_hits = _bool(remove_accidental_hits, "remove_accidental_hits")
        self.gravity = check_real(gravity, "gravity", minimum=0)
        self.mixed_negatives = check_int(mixed_negatives, "mixed_negatives", minimum=0)
        self.frequency_estimate = check_choice(
            frequency_estimate, "frequency_estimate", ("counts", "streaming")
        )
        if self.sampler != "in_batch" and (
            self.mixed_negatives or self.frequency_estimate != "counts"
        ):
            name = "mixed_negatives" if self.mixed_negatives else "frequency_estimate"
            raise ValueError(f"{name}: only for sampler='in_batch', got sampler={self.sampler!r}")

    def loss_options(self, loss: str) -> dict[str, Any]:
        """The ``loss_options`` of the C++ loss factory for ``loss``."""
        if loss != "sampled":
            if self.gravity == 0.0:
                return {}
            return {"gravity": self.gravity, "num_negatives": self.num_negatives or 256}
        out: dict[str, Any] = {
            "sampler": self.sampler,
            "sampler_alpha": self.sampler_alpha,
            "num_negatives": self.num_negatives or 0,  # in_batch: 0 = no cap
            "share_negatives": self.share_negatives,
            "hard_pool": 0 if self.hard_pool is None else self.hard_pool,
            "temperature": self.temperature,
            "hard_fraction": self.hard_fraction,
            "logq_correction": self.logq_correction,
            "remove_accidental_hits": self.remove_accidental_hits,
            "gravity": self.gravity,
            "mixed_negatives": self.mixed_negatives,
            "frequency_estimate": self.frequency_estimate,
        }
        if self.sampler == "in_batch":
            out["mixed_negatives"] = self.mixed_negatives
            out["frequency_estimate"] = self.frequency_estimate
        if self.sampler_weights is not None:
            out["sampler_weights"] = self.sampler_weights
        return out

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (for save / load)."""
        return {
            "num_negatives": self.num_negatives,
            "sampler": self.sampler,
            "sampler_alpha": self.sampler_alpha,
            "sampler_weights": None
            if self.sampler_weights is None
            else self.sampler_weights.tolist(),
            "share_negatives": self.share_negatives,
            "hard_pool": self.hard_pool,
            "temperature": self.temperature,
            "hard_fraction": self.hard_fraction,
            "logq_correction": self.logq_correction,
            "remove_accidental_hits": self.remove_accidental_hits,
            "gravity": self.gravity,
            "mixed_negatives": self.mixed_negatives,
            "frequency_estimate": self.frequency_estimate,
        }
