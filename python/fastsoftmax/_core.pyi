# Type stubs for the private C++ extension. Public API: see the fastsoftmax package.
import numpy as np

__version__: str

def resolve_num_threads(num_threads: int) -> int: ...
def _parallel_sum_for_tests(
    n_tasks: int, num_threads: int, fail_task: int = -1, sleep_seconds: float = 0.0
) -> int: ...

class AliasSampler:
    def __init__(self, weights: np.ndarray) -> None: ...
    def __len__(self) -> int: ...
    @property
    def probabilities(self) -> np.ndarray: ...
    def table(self) -> tuple[np.ndarray, np.ndarray]: ...
    def sample(self, size: int, seed: int, num_threads: int) -> np.ndarray: ...

# Sampled softmax test hooks (issue 6; the public API is fs.SoftmaxModel(loss="sampled")).
def _sample_negatives(
    sampler: str,
    n_items: int,
    num_negatives: int,
    share: bool,
    hard_pool: int,
    temperature: float,
    hard_fraction: float,
    weights: np.ndarray | None,
    psi: np.ndarray | None,
    items: np.ndarray | None,
    bias: np.ndarray | None,
    indptr: np.ndarray | None,
    indices: np.ndarray | None,
    seed: int,
    num_threads: int,
) -> dict[str, np.ndarray | int]: ...
def _sampled_softmax(
    psi: np.ndarray,
    items: np.ndarray,
    bias: np.ndarray | None,
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    ids: np.ndarray,
    log_q: np.ndarray,
    owner: np.ndarray | None,
    pos_log_q: np.ndarray | None,
    logq_correction: bool,
    remove_accidental_hits: bool,
    gravity: float,
    grad_scale: float,
    num_threads: int,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]: ...
def _sampled_softmax_estimate(
    sampler: str,
    num_negatives: int,
    share: bool,
    hard_pool: int,
    temperature: float,
    hard_fraction: float,
    sampler_weights: np.ndarray | None,
    psi: np.ndarray,
    items: np.ndarray,
    bias: np.ndarray | None,
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    logq_correction: bool,
    remove_accidental_hits: bool,
    gravity: float,
    grad_scale: float,
    seed: int,
    num_threads: int,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]: ...
def _gravity_exact(
    psi: np.ndarray, items: np.ndarray, gamma: float, grad_scale: float, num_threads: int
) -> tuple[float, np.ndarray, np.ndarray]: ...
