#include "fastsoftmax/mlp.h"

#include <algorithm>

#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {
constexpr index_t kRowChunk = 128;  // rows per task (forward, input gradient)
constexpr index_t kColChunk = 64;  // output columns per task (weight gradient)

template <class M>
auto rows_block(M& m, index_t r0, index_t B) {
  return m.middleRows(r0, std::min(kRowChunk, B - r0));
}
}  // namespace

Mlp::Mlp(const std::vector<index_t>& sizes) : sizes_(sizes) {
  if (sizes.size() < 2) throw_invalid("sizes: expected at least 2 layer sizes, got ", sizes.size());
  for (const index_t s : sizes) {
    if (s < 1) throw_invalid("sizes: expected every layer size >= 1, got ", s);
  }
  for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
    weights.emplace_back(sizes[l], sizes[l + 1]);
    biases.emplace_back(1, sizes[l + 1]);
  }
}

void Mlp::Workspace::resize(const Mlp& mlp, index_t B) {
  const auto& s = mlp.sizes();
  acts.resize(s.size());
  grads.resize(s.size());
  for (std::size_t l = 0; l < s.size(); ++l) {
    if (acts[l].rows() != B || acts[l].cols() != s[l]) acts[l].resize(B, s[l]);
    if (grads[l].rows() != B || grads[l].cols() != s[l]) grads[l].resize(B, s[l]);
  }
  rows = B;
}

void Mlp::forward(Workspace& ws, int num_threads) const {
  const index_t B = ws.rows;
  const index_t L = num_layers();
  const index_t n_tasks = (B + kRowChunk - 1) / kRowChunk;
  for (index_t l = 0; l < L; ++l) {
    const RowMatrixXf& W = weights[l].value;
    const RowMatrixXf& b = biases[l].value;
    const bool relu = l + 1 < L;
    const RowMatrixXf& in = ws.acts[l];
    RowMatrixXf& out = ws.acts[l + 1];
    parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
      const index_t r0 = t * kRowChunk;
      auto o = rows_block(out, r0, B);
      o.noalias() = rows_block(in, r0, B) * W;
      o.rowwise() += b.row(0);
      if (relu) o = o.cwiseMax(0.0f);
    });
  }
}

void Mlp::backward(Workspace& ws, std::vector<RowMatrixXf>& dW, std::vector<RowMatrixXf>& db,
                   int num_threads) const {
  const index_t B = ws.rows;
  const index_t L = num_layers();
  const index_t row_tasks = (B + kRowChunk - 1) / kRowChunk;
  for (index_t l = L - 1; l >= 0; --l) {
    RowMatrixXf& dH = ws.grads[l + 1];  // gradient w.r.t. the pre-activation of layer l's output
    if (l + 1 < L) {
      // ReLU: acts[l+1] = max(h, 0), so dh = dact where acts[l+1] > 0.
      dH = (ws.acts[l + 1].array() > 0.0f).select(dH, 0.0f);
    }
    const RowMatrixXf& A = ws.acts[l];
    const index_t out_dim = sizes_[l + 1];
    const index_t col_tasks = (out_dim + kColChunk - 1) / kColChunk;
    parallel_for(col_tasks, num_threads, [&](std::int64_t t, int) {
      const index_t c0 = t * kColChunk;
      const index_t w = std::min(kColChunk, out_dim - c0);
      dW[l].middleCols(c0, w).noalias() += A.transpose() * dH.middleCols(c0, w);
      db[l].middleCols(c0, w) += dH.middleCols(c0, w).colwise().sum();
    });
    const RowMatrixXf& W = weights[l].value;
    RowMatrixXf& dA = ws.grads[l];
    parallel_for(row_tasks, num_threads, [&](std::int64_t t, int) {
      const index_t r0 = t * kRowChunk;
      rows_block(dA, r0, B).noalias() = rows_block(dH, r0, B) * W.transpose();
    });
  }
}

}  // namespace fastsoftmax
