# Type stubs for the private C++ extension. Public API: see the fastsoftmax package.
import numpy as np

kernel_level: str  # "generic" | "avx2" | "avx512" | "native": the build in use
__version__: str

def resolve_num_threads(num_threads: int) -> int: ...

class AliasSampler:
    def __init__(self, weights: np.ndarray) -> None: ...
    def __len__(self) -> int: ...
    @property
    def probabilities(self) -> np.ndarray: ...
    def table(self) -> tuple[np.ndarray, np.ndarray]: ...
    def sample(self, size: int, seed: int, num_threads: int) -> np.ndarray: ...

def topk(
    queries: np.ndarray,
    items: np.ndarray,
    k: int,
    exclude_indptr: np.ndarray | None,
    exclude_indices: np.ndarray | None,
    num_threads: int,
) -> tuple[np.ndarray, np.ndarray]: ...

class IvfIndex:
    @staticmethod
    def build(
        items: np.ndarray,
        n_lists: int,
        iterations: int,
        max_train: int,
        seed: int,
        num_threads: int,
    ) -> IvfIndex: ...
    def __init__(
        self,
        centroids: np.ndarray,
        list_offsets: np.ndarray,
        list_ids: np.ndarray,
        vectors: np.ndarray,
    ) -> None: ...
    def search(
        self,
        queries: np.ndarray,
        k: int,
        n_probe: int,
        exclude_indptr: np.ndarray | None,
        exclude_indices: np.ndarray | None,
        num_threads: int,
    ) -> tuple[np.ndarray, np.ndarray]: ...
    @property
    def n_items(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def n_lists(self) -> int: ...
    def centroids(self) -> np.ndarray: ...
    def list_offsets(self) -> np.ndarray: ...
    def list_ids(self) -> np.ndarray: ...
    def vectors(self) -> np.ndarray: ...
    def gather(self, ids: np.ndarray) -> np.ndarray: ...

class SoftmaxData: ...

class SoftmaxModel:
    def __init__(
        self,
        n_items: int,
        dim: int,
        hidden: list[int],
        n_dense: int,
        categorical_names: list[str],
        categorical_vocab: list[int],
        categorical_dim: list[int],
        bag_names: list[str],
        bag_vocab: list[int],
        bag_dim: list[int],
        pooling: str,
        history_bag: int,
        history_dropout: float,
        history_target: str,
        item_bias: bool,
        loss: str,
        loss_options: dict[str, object],
        optimizer: str,
        learning_rate: float,
        l2: float,
        batch_size: int,
        seed: int,
        num_threads: int,
        item_schema: dict[str, object] | None = None,
        item_hidden: list[int] = ...,
        item_id_embedding: bool = False,
        item_id_dropout: float = 0.0,
        item_buckets: int = 0,
        item_dedicated: list[int] | np.ndarray = ...,
    ) -> None: ...
    def data(
        self,
        rows: int,
        dense: np.ndarray | None,
        categorical: list[np.ndarray],
        bags: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
        targets: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> SoftmaxData: ...
    def fit_epoch(
        self, data: SoftmaxData, epoch: int, items: SoftmaxData | None = None
    ) -> float: ...
    def history_kept(self, data: SoftmaxData, epoch: int) -> np.ndarray: ...
    def query_embeddings(self, data: SoftmaxData) -> np.ndarray: ...
    def item_data(
        self,
        rows: int,
        dense: np.ndarray | None,
        categorical: list[np.ndarray],
        bags: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    ) -> SoftmaxData: ...
    def item_embeddings(self, items: SoftmaxData, own_ids: bool) -> np.ndarray: ...
    def item_rows(self, begin: int, end: int) -> np.ndarray: ...
    def evaluate(
        self, data: SoftmaxData, seed: int, with_gradients: bool, items: SoftmaxData | None = None
    ) -> tuple[float, dict[str, np.ndarray]]: ...
    def parameters(self) -> dict[str, np.ndarray]: ...
    def prepare_loss(self, data: SoftmaxData) -> None: ...
    def reset_optimizer_state(self) -> None: ...
    @property
    def steps(self) -> int: ...
    @property
    def loss_name(self) -> str: ...

# WALS (cpp/fastsoftmax/wals.h)
wals_gramian_chunk: int

def wals_gramian(factors: np.ndarray, num_threads: int) -> np.ndarray: ...
def wals_solve_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None,
    fixed: np.ndarray,
    gramian: np.ndarray,
    x: np.ndarray,
    unobserved_weight: float,
    regularization: float,
    solver: str,
    cg_steps: int,
    num_threads: int,
    row_loss: np.ndarray | None = None,
) -> None: ...
def wals_objective(
    indptr: np.ndarray,
    indices: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    unobserved_weight: float,
    regularization: float,
    num_threads: int,
) -> float: ...

# Sampled softmax test hooks (issue 6; the public API is fs.SoftmaxModel(loss="sampled")).

class _TestingModule:
    """_core._testing: the hooks the tests call (not part of the API)."""

    @staticmethod
    def parallel_sum(
        n_tasks: int, num_threads: int, fail_task: int = -1, sleep_seconds: float = 0.0
    ) -> int: ...
    @staticmethod
    def topk_uses_avx2() -> bool: ...
    @staticmethod
    def topk_force_scalar(on: bool) -> None: ...
    @staticmethod
    def sample_negatives(
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
    @staticmethod
    def sampled_softmax(
        psi: np.ndarray,
        items: np.ndarray,
        bias: np.ndarray | None,
        indptr: np.ndarray,
        indices: np.ndarray,
        weights: np.ndarray,
        ids: np.ndarray,
        log_q: np.ndarray,
        pos_log_q: np.ndarray | None,
        logq_correction: bool,
        remove_accidental_hits: bool,
        gravity: float,
        grad_scale: float,
        num_threads: int,
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]: ...
    @staticmethod
    def sampled_softmax_estimate(
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
    @staticmethod
    def gravity_exact(
        psi: np.ndarray, items: np.ndarray, gamma: float, grad_scale: float, num_threads: int
    ) -> tuple[float, np.ndarray, np.ndarray]: ...

_testing: _TestingModule
