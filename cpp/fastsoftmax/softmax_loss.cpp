#include "fastsoftmax/softmax_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

// Items per GEMM block (a B x kBlock logits block stays in L2) and the fixed partition of the items
// into tasks: at most kMaxItemTasks tasks of at least kMinItemsPerTask items, a function of n only.
constexpr index_t kBlock = 256;
constexpr index_t kMinItemsPerTask = 1024;
constexpr index_t kMaxItemTasks = 64;
constexpr index_t kRowChunk = 16;  // rows per task of the per-row work

using ConstMapV = Eigen::Map<const RowMatrixXf>;
using StridedMap = Eigen::Map<RowMatrixXf, 0, Eigen::OuterStride<>>;

struct ItemPartition {
  index_t n_tasks, per_task;
  ItemPartition(index_t n) {
    n_tasks = std::clamp<index_t>(n / kMinItemsPerTask, 1, kMaxItemTasks);
    per_task = (n + n_tasks - 1) / n_tasks;
    per_task = (per_task + kBlock - 1) / kBlock * kBlock;  // whole blocks per task
    n_tasks = (n + per_task - 1) / per_task;
  }
};

// z_bj for one (row, item) pair, in double.
inline double logit(const float* psi_b, const ItemParamsView& items, index_t j) {
  const float* v = items.weights + j * items.dim;
  double z = 0.0;
  for (index_t c = 0; c < items.dim; ++c) z += static_cast<double>(psi_b[c]) * v[c];
  if (items.bias) z += items.bias[j];
  return z;
}

}  // namespace

double FullSoftmaxLoss::forward_backward(const ConstMapRowMatrixXf& psi,
                                         const ItemParamsView& items, const TargetsView& targets,
                                         const LossContext& ctx, MapRowMatrixXf* dpsi,
                                         ItemGradient* item_grad) {
  const index_t B = targets.rows;
  const index_t n = items.n_items;
  const index_t d = items.dim;
  const bool backward = dpsi != nullptr;
  const ItemPartition part(n);
  const index_t n_blocks = (n + kBlock - 1) / kBlock;
  const bool buffered = static_cast<std::size_t>(B) * static_cast<std::size_t>(n) * sizeof(float) <=
                        max_buffer_bytes_;
  if (buffered && (logits_.rows() != B || logits_.cols() != n)) logits_.resize(B, n);
  const int slots = threads_for(part.n_tasks, ctx.num_threads);
  if (static_cast<int>(scratch_.size()) < slots) scratch_.resize(slots);
  for (auto& sc : scratch_) {
    if (!buffered && (sc.rows() != B || sc.cols() != kBlock)) sc.resize(B, kBlock);
  }
  if (static_cast<int>(scaled_psi_.size()) < slots) scaled_psi_.resize(slots);
  // Per task and row: running max and sum of exp(z - max); per block and row: the max that the
  // block's stored exponentials are relative to.
  row_max_.assign(static_cast<std::size_t>(part.n_tasks * B), 0.0f);
  row_sum_.assign(static_cast<std::size_t>(part.n_tasks * B), 0.0f);
  if (buffered && backward) block_max_.resize(static_cast<std::size_t>(n_blocks * B));
  if (backward && static_cast<index_t>(partial_dpsi_.size()) < part.n_tasks) {
    partial_dpsi_.resize(part.n_tasks);
  }
  const ConstMapV V(items.weights, n, d);

  // The logits of items [j0, j0 + nb) for all B rows: in the buffer, or computed into scratch.
  auto block_logits = [&](index_t j0, index_t nb, int slot, bool compute) -> StridedMap {
    float* base = buffered ? logits_.data() + j0 : scratch_[slot].data();
    const index_t stride = buffered ? n : kBlock;
    StridedMap Z(base, B, nb, Eigen::OuterStride<>(stride));
    if (compute) {
      Z.noalias() = psi * V.middleRows(j0, nb).transpose();
      if (items.bias) {
        Z.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(items.bias + j0, nb);
      }
    }
    return Z;
  };

  // Pass 1, one task per fixed range of items, block by block with an online max (as in
  // flash attention): Z = psi V_blk^T; E = exp(Z - m) with m the running row max (E replaces Z
  // in the buffer); s = sum E; and for the backward pass P_t = sum_blocks E V_blk, rescaled
  // whenever the running max grows. dL/dpsi needs no second pass.
  parallel_for(part.n_tasks, ctx.num_threads, [&](std::int64_t t, int slot) {
    float* m = row_max_.data() + t * B;
    float* s = row_sum_.data() + t * B;
    std::fill_n(m, B, -std::numeric_limits<float>::infinity());
    RowMatrixXf* P = backward ? &partial_dpsi_[t] : nullptr;
    if (P) {
      if (P->rows() != B || P->cols() != d) P->resize(B, d);
      P->setZero();
    }
    const index_t end = std::min(n, (t + 1) * part.per_task);
    for (index_t j0 = t * part.per_task; j0 < end; j0 += kBlock) {
      const index_t nb = std::min(kBlock, end - j0);
      StridedMap Z = block_logits(j0, nb, slot, true);
      for (index_t b = 0; b < B; ++b) {
        const float new_m = std::max(m[b], Z.row(b).maxCoeff());
        const float alpha = std::exp(m[b] - new_m);  // 0 on the first block (m = -inf)
        Z.row(b).array() = (Z.row(b).array() - new_m).exp();
        s[b] = s[b] * alpha + Z.row(b).sum();
        if (P && alpha != 1.0f) P->row(b) *= alpha;
        m[b] = new_m;
      }
      if (P) {
        P->noalias() += Z * V.middleRows(j0, nb);
        if (buffered) std::copy_n(m, B, block_max_.data() + (j0 / kBlock) * B);
      }
    }
  });
  // Merge tasks in task order: lse_b = M + log(sum_t s_t exp(m_t - M)).
  std::vector<float>& lse = lse_;
  lse.resize(B);
  for (index_t b = 0; b < B; ++b) {
    float M = -std::numeric_limits<float>::infinity();
    for (index_t t = 0; t < part.n_tasks; ++t) M = std::max(M, row_max_[t * B + b]);
    double S = 0.0;
    for (index_t t = 0; t < part.n_tasks; ++t) {
      S += static_cast<double>(row_sum_[t * B + b]) *
           std::exp(static_cast<double>(row_max_[t * B + b]) - M);
    }
    lse[b] = static_cast<float>(M + std::log(S));
  }
  // Loss: sum_b sum_j p_bj (lse_b - z_bj), z recomputed in double for the positives.
  double loss = 0.0;
  for (index_t b = 0; b < B; ++b) {
    for (index_t k = targets.indptr[b]; k < targets.indptr[b + 1]; ++k) {
      loss += targets.weights[k] * (lse[b] - logit(psi.data() + b * d, items, targets.indices[k]));
    }
  }
  if (!backward) return loss;

  // Pass 2: dV_blk = softmax_blk^T (scale psi) with softmax_bj = E_bj exp(m_blk,b - lse_b): the
  // per-row factor goes into a scaled copy of psi, so the stored E is used as is.
  item_grad->kind = ItemGradient::Kind::kDense;
  if (item_grad->dense_weights.rows() != n || item_grad->dense_weights.cols() != d) {
    item_grad->dense_weights.resize(n, d);
  }
  item_grad->dense_bias.resize(items.bias ? n : 0);
  const float scale = ctx.grad_scale;
  const Eigen::Map<const Eigen::VectorXf> lse_vec(lse.data(), B);
  parallel_for(part.n_tasks, ctx.num_threads, [&](std::int64_t t, int slot) {
    RowMatrixXf& psi_c = scaled_psi_[slot];
    Eigen::VectorXf c(B);
    const index_t end = std::min(n, (t + 1) * part.per_task);
    for (index_t j0 = t * part.per_task; j0 < end; j0 += kBlock) {
      const index_t nb = std::min(kBlock, end - j0);
      StridedMap E = block_logits(j0, nb, slot, !buffered);
      if (buffered) {
        const Eigen::Map<const Eigen::VectorXf> mk(block_max_.data() + (j0 / kBlock) * B, B);
        c = ((mk - lse_vec).array().exp() * scale).matrix();
      } else {
        E.array() = (E.array().colwise() - lse_vec.array()).exp();
        c.setConstant(scale);
      }
      psi_c.noalias() = c.asDiagonal() * psi;
      item_grad->dense_weights.middleRows(j0, nb).noalias() = E.transpose() * psi_c;
      if (items.bias) {
        Eigen::Map<Eigen::VectorXf>(item_grad->dense_bias.data() + j0, nb).noalias() =
            E.transpose() * c;
      }
    }
  });
  // dL/dpsi_b = scale / S_b * sum_t exp(m_tb - M_b) P_t[b] = scale * sum_t exp(m_tb - lse_b) P_t[b].
  dpsi->setZero();
  for (index_t t = 0; t < part.n_tasks; ++t) {
    const Eigen::Map<const Eigen::VectorXf> mt(row_max_.data() + t * B, B);
    dpsi->noalias() += ((mt - lse_vec).array().exp() * scale).matrix().asDiagonal() * partial_dpsi_[t];
  }

  // Minus the targets: dz_bj -= scale * p_bj on the positives.
  for (index_t b = 0; b < B; ++b) {
    for (index_t k = targets.indptr[b]; k < targets.indptr[b + 1]; ++k) {
      const index_t j = targets.indices[k];
      const float c = scale * targets.weights[k];
      dpsi->row(b) -= c * V.row(j);
      item_grad->dense_weights.row(j) -= c * psi.row(b);
      if (items.bias) item_grad->dense_bias[j] -= c;
    }
  }
  return loss;
}

double PositivesOnlyLoss::forward_backward(const ConstMapRowMatrixXf& psi,
                                           const ItemParamsView& items, const TargetsView& targets,
                                           const LossContext& ctx, MapRowMatrixXf* dpsi,
                                           ItemGradient* item_grad) {
  const index_t B = targets.rows;
  const index_t d = items.dim;
  const index_t nnz = targets.indptr[B];
  const bool backward = dpsi != nullptr;
  const ConstMapV V(items.weights, items.n_items, d);
  dz_.resize(static_cast<std::size_t>(nnz));
  row_loss_.resize(static_cast<std::size_t>(B));
  // Per row: softmax over its positives; dz = scale * (softmax - p); dpsi_b = sum_k dz_k V_jk.
  const index_t n_tasks = (B + kRowChunk - 1) / kRowChunk;
  parallel_for(n_tasks, ctx.num_threads, [&](std::int64_t t, int) {
    const index_t end = std::min(B, (t + 1) * kRowChunk);
    for (index_t b = t * kRowChunk; b < end; ++b) {
      const index_t k0 = targets.indptr[b], k1 = targets.indptr[b + 1];
      double m = -std::numeric_limits<double>::infinity();
      for (index_t k = k0; k < k1; ++k) {
        const double z = logit(psi.data() + b * d, items, targets.indices[k]);
        dz_[k] = static_cast<float>(z);
        m = std::max(m, z);
      }
      double s = 0.0;
      for (index_t k = k0; k < k1; ++k) s += std::exp(dz_[k] - m);
      const double lse = m + std::log(s);
      double l = 0.0;
      for (index_t k = k0; k < k1; ++k) {
        l += targets.weights[k] * (lse - dz_[k]);
        dz_[k] = ctx.grad_scale * static_cast<float>(std::exp(dz_[k] - lse) - targets.weights[k]);
      }
      row_loss_[b] = l;
      if (backward) {
        dpsi->row(b).setZero();
        for (index_t k = k0; k < k1; ++k) dpsi->row(b) += dz_[k] * V.row(targets.indices[k]);
      }
    }
  });
  double loss = 0.0;
  for (index_t b = 0; b < B; ++b) loss += row_loss_[b];
  if (!backward) return loss;

  // Row-sparse item gradient over the sorted unique positives of the batch.
  item_grad->kind = ItemGradient::Kind::kRowSparse;
  auto& rows = item_grad->rows;
  rows.assign(targets.indices, targets.indices + nnz);
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  const index_t k_rows = static_cast<index_t>(rows.size());
  if (item_grad->sparse_weights.rows() < k_rows || item_grad->sparse_weights.cols() != d) {
    item_grad->sparse_weights.resize(std::max<index_t>(k_rows, 2 * item_grad->sparse_weights.rows()), d);
  }
  item_grad->sparse_weights.topRows(k_rows).setZero();
  item_grad->sparse_bias.assign(items.bias ? k_rows : 0, 0.0f);
  for (index_t b = 0; b < B; ++b) {
    for (index_t k = targets.indptr[b]; k < targets.indptr[b + 1]; ++k) {
      const index_t i = std::lower_bound(rows.begin(), rows.end(), targets.indices[k]) - rows.begin();
      item_grad->sparse_weights.row(i) += dz_[k] * psi.row(b);
      if (items.bias) item_grad->sparse_bias[i] += dz_[k];
    }
  }
  return loss;
}

}  // namespace fastsoftmax
