"""Results of the main kernels at a fixed seed, for comparing two CPUs or kernel levels.

    python .ci/levels_check.py out.npz            # write this run's results
    python .ci/levels_check.py out.npz ref.npz    # ... and compare with a reference run

Used by .ci/wheel: the native run and a run under ``qemu-x86_64 -cpu Nehalem`` (the generic
build, no AVX2) must agree within float tolerance.
"""

import sys

import numpy as np
import scipy.sparse as sp

import fastsoftmax as fs


def results() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 48)).astype(np.float32)
    v = rng.normal(size=(2000, 48)).astype(np.float32)
    ids, scores = fs.topk(q, v, 10, num_threads=2)
    x = sp.random(300, 200, density=0.05, format="csr", random_state=1, dtype=np.float32)
    x = sp.csr_matrix(x[x.getnnz(axis=1) > 0])
    feats = fs.QueryFeatures(bags={"history": x})
    out = {"topk_ids": ids, "topk_scores": scores}
    for loss in ("full", "sampled"):
        model = fs.SoftmaxModel(200, history="history", hidden=(32,), dim=16, embedding_dim=16,
                                loss=loss, num_negatives=64, epochs=2, num_threads=2, seed=3)  # fmt: skip
        model.fit(feats, x, show_progress=False)
        out[f"softmax_{loss}"] = model.query_embeddings(feats)
    for solver in ("cg", "cholesky"):
        mf = fs.WALS(16, iterations=3, solver=solver, num_threads=2, seed=4)
        out[f"wals_{solver}"] = mf.fit(x, show_progress=False).item_embeddings
    return out


def main() -> int:
    res = results()
    np.savez(sys.argv[1], kernel_level=np.array(fs._core.kernel_level), **res)
    print(f"{fs._core.kernel_level}: {', '.join(res)}")
    if len(sys.argv) < 3:
        return 0
    ref = np.load(sys.argv[2])
    bad = []
    for name, value in res.items():
        other = ref[name]
        same = (np.array_equal(value, other) if value.dtype.kind == "i"
                else np.allclose(value, other, rtol=1e-3, atol=1e-4))  # fmt: skip
        if not same:
            bad.append(name)
    print(f"vs {ref['kernel_level']}: " + ("all equal within tolerance" if not bad else
                                            f"DIFFERENT: {', '.join(bad)}"))  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
