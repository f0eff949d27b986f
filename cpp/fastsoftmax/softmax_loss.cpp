#include "fastsoftmax/softmax_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastsoftmax/simd_kernels.h"
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
  const float* v = items.row(j);
  double z = 0.0;
  for (index_t c = 0; c < items.dim; ++c) z += static_cast<double>(psi_b[c]) * v[c];
  if (items.bias) z += items.bias[j];
  return z;
}

// lse_b = M + log(sum_t s_tb exp(m_tb - M)), M = max_t m_tb, merged in task order; task t's
// running max and sum of row b are m[t * stride + b] and s[t * stride + b].
void merge_lse(const float* m, const float* s, index_t n_tasks, index_t stride, index_t rows,
               float* lse) {
  for (index_t b = 0; b < rows; ++b) {
    float M = -std::numeric_limits<float>::infinity();
    for (index_t t = 0; t < n_tasks; ++t) M = std::max(M, m[t * stride + b]);
    double S = 0.0;
    for (index_t t = 0; t < n_tasks; ++t) {
      S += static_cast<double>(s[t * stride + b]) *
           std::exp(static_cast<double>(m[t * stride + b]) - M);
    }
    lse[b] = static_cast<float>(M + std::log(S));
  }
}

// sum_b sum_j p_bj (lse_b - z_bj), z recomputed in double for the positives.
double positives_loss(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                      const TargetsView& targets, const float* lse) {
  double loss = 0.0;
  for (index_t b = 0; b < targets.rows; ++b) {
    for (index_t k = targets.indptr[b]; k < targets.indptr[b + 1]; ++k) {
      loss += targets.weights[k] *
              (lse[b] - logit(psi.data() + b * items.dim, items, targets.indices[k]));
    }
  }
  return loss;
}

// Per row: scale x the row's mass, the factor of its softmax term in the gradient.
void fill_coefficients(const TargetsView& targets, float scale, std::vector<float>* coef) {
  coef->resize(static_cast<std::size_t>(targets.rows));
  for (index_t b = 0; b < targets.rows; ++b) {
    (*coef)[b] = scale * row_mass(targets.indptr, targets.weights, b);
  }
}

// Minus the targets: dz_bj -= scale * y_bj on the positives.
void subtract_targets(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                      const TargetsView& targets, float scale, MapRowMatrixXf* dpsi,
                      ItemGradient* item_grad) {
  const ConstMapV V(items.weights, items.n_items, items.dim);
  for (index_t b = 0; b < targets.rows; ++b) {
    for (index_t k = targets.indptr[b]; k < targets.indptr[b + 1]; ++k) {
      const index_t j = targets.indices[k];
      const float c = scale * targets.weights[k];
      dpsi->row(b) -= c * V.row(j);
      item_grad->dense_weights.row(j) -= c * psi.row(b);
      if (items.bias) item_grad->dense_bias[j] -= c;
    }
  }
}

void prepare_dense_gradient(const ItemParamsView& items, ItemGradient* item_grad) {
  item_grad->kind = ItemGradient::Kind::kDense;
  if (item_grad->dense_weights.rows() != items.n_items ||
      item_grad->dense_weights.cols() != items.dim) {
    item_grad->dense_weights.resize(items.n_items, items.dim);
  }
  item_grad->dense_bias.resize(items.bias ? items.n_items : 0);
}

}  // namespace

FullSoftmaxLoss::FullSoftmaxLoss(std::size_t max_buffer_bytes, bool portable)
    : max_buffer_bytes_(max_buffer_bytes), simd_(!portable && simd::avx2_fma_available()) {}

double FullSoftmaxLoss::forward_backward(const ConstMapRowMatrixXf& psi,
                                         const ItemParamsView& items, const TargetsView& targets,
                                         const LossContext& ctx, MapRowMatrixXf* dpsi,
                                         ItemGradient* item_grad) {
  return simd_ ? forward_backward_simd(psi, items, targets, ctx, dpsi, item_grad)
               : forward_backward_eigen(psi, items, targets, ctx, dpsi, item_grad);
}

// The SIMD path. Item-major layout: X (items x Bp) holds the batch's logits of item j in row j,
// so every per-batch-row operation of the online log-sum-exp is a vertical (column) SIMD
// operation, and the three products are one strided-operand GEMM kernel each:
//   pass 1 per block:  X_blk = V_blk psi^T (+ b_blk);  X_blk = exp(X_blk - m) with m the
//                      running column max (P^T and s rescaled when m grows);
//                      P^T += V_blk^T X_blk     (d x Bp: the task's part of dL/dpsi, transposed)
//   pass 2 per block:  dV_blk = X_blk (c * psi) with c_b = exp(m_blk,b - lse_b) * scale.
// X blocks, psi^T and c * psi are stored panel-major (simd_kernels.h): 16 batch rows per panel.
double FullSoftmaxLoss::forward_backward_simd(const ConstMapRowMatrixXf& psi,
                                              const ItemParamsView& items,
                                              const TargetsView& targets, const LossContext& ctx,
                                              MapRowMatrixXf* dpsi, ItemGradient* item_grad) {
  using simd::kPanel;
  using simd::Operand;
  constexpr index_t kSimdBlock = 128;  // items per block: X_blk, V_blk and P^T stay in L2
  const index_t B = targets.rows;
  const index_t n = items.n_items;
  const index_t d = items.dim;
  const index_t Bp = (B + kPanel - 1) / kPanel * kPanel;
  const index_t dp = (d + kPanel - 1) / kPanel * kPanel;
  const index_t n_panels = Bp / kPanel;
  const index_t block_size = kSimdBlock * Bp;      // floats of one X block
  const index_t x_ps = kSimdBlock * kPanel;         // panel stride inside an X block
  const bool backward = dpsi != nullptr;
  const ItemPartition part(n);
  const index_t n_blocks = (n + kSimdBlock - 1) / kSimdBlock;
  const bool buffered = static_cast<std::size_t>(n_blocks) * static_cast<std::size_t>(block_size) *
                            sizeof(float) <= max_buffer_bytes_;
  const int slots = threads_for(part.n_tasks, ctx.num_threads);
  const float inf = std::numeric_limits<float>::infinity();

  // psi^T panel-major and zero-padded to Bp columns (padded batch rows have logits b_j, finite,
  // and never reach a result).
  psi_t_.assign(static_cast<std::size_t>(d * Bp), 0.0f);
  for (index_t b = 0; b < B; ++b) {
    float* dst = psi_t_.data() + (b / kPanel) * d * kPanel + b % kPanel;
    for (index_t c = 0; c < d; ++c) dst[c * kPanel] = psi(b, c);
  }
  if (buffered) exps_.resize(static_cast<std::size_t>(n_blocks * block_size));
  task_m_.assign(static_cast<std::size_t>(part.n_tasks * Bp), -inf);
  task_s_.assign(static_cast<std::size_t>(part.n_tasks * Bp), 0.0f);
  if (backward) task_p_.resize(static_cast<std::size_t>(part.n_tasks * d * Bp));
  if (buffered && backward) block_max_.resize(static_cast<std::size_t>(n_blocks * Bp));
  // Per slot: X block scratch, c * psi (Bp x dp), dV block (kSimdBlock x dp), column factors.
  const std::size_t slot_size =
      static_cast<std::size_t>(block_size + Bp * dp + kSimdBlock * dp + Bp);
  slot_buf_.resize(slot_size * static_cast<std::size_t>(slots));
  const float* V = items.weights;

  // X rows [j0, j0 + nb): in the buffer, or in the slot's scratch.
  auto block_ptr = [&](index_t j0, int slot) -> float* {
    return buffered ? exps_.data() + (j0 / kSimdBlock) * block_size
                    : slot_buf_.data() + slot * slot_size;
  };
  auto compute_logits = [&](index_t j0, index_t nb, float* X) {
    simd::gemm(nb, Bp, d, Operand{V + j0 * d, d}, Operand{psi_t_.data(), kPanel, 1, d * kPanel},
               simd::Output{X, kPanel, x_ps}, false);
    if (items.bias) {
      for (index_t p = 0; p < n_panels; ++p) {
        simd::add_row_values(X + p * x_ps, nb, kPanel, kPanel, items.bias + j0);
      }
    }
  };

  parallel_for(part.n_tasks, ctx.num_threads, [&](std::int64_t t, int slot) {
    float* m = task_m_.data() + t * Bp;
    float* s = task_s_.data() + t * Bp;
    float* alpha = slot_buf_.data() + slot * slot_size + slot_size - Bp;
    float* P = backward ? task_p_.data() + t * d * Bp : nullptr;
    if (P) std::fill_n(P, d * Bp, 0.0f);
    const index_t end = std::min(n, (t + 1) * part.per_task);
    for (index_t j0 = t * part.per_task; j0 < end; j0 += kSimdBlock) {
      const index_t nb = std::min(kSimdBlock, end - j0);
      float* X = block_ptr(j0, slot);
      compute_logits(j0, nb, X);
      for (index_t p = 0; p < n_panels; ++p) {
        simd::online_exp_block(X + p * x_ps, nb, kPanel, kPanel, m + p * kPanel, s + p * kPanel,
                               alpha + p * kPanel);
      }
      if (P) {
        if (j0 > t * part.per_task) simd::scale_columns(P, d, Bp, Bp, alpha);
        // P^T(c, b) += sum_j V(j, c) X(j, b): A(c, j) = V[j * d + c].
        simd::gemm(d, Bp, nb, Operand{V + j0 * d, 1, d, kPanel * d}, Operand{X, kPanel, 1, x_ps},
                   simd::Output{P, Bp}, true);
        if (buffered) std::copy_n(m, Bp, block_max_.data() + (j0 / kSimdBlock) * Bp);
      }
    }
  });
  lse_.resize(static_cast<std::size_t>(Bp));
  merge_lse(task_m_.data(), task_s_.data(), part.n_tasks, Bp, Bp, lse_.data());
  const double loss = positives_loss(psi, items, targets, lse_.data());
  if (!backward) return loss;

  prepare_dense_gradient(items, item_grad);
  if (items.bias) std::fill(item_grad->dense_bias.begin(), item_grad->dense_bias.end(), 0.0f);
  const float scale = ctx.grad_scale;
  fill_coefficients(targets, scale, &coef_);
  const bool direct = dp == d;  // dV blocks can be written straight into the gradient
  parallel_for(part.n_tasks, ctx.num_threads, [&](std::int64_t t, int slot) {
    float* base = slot_buf_.data() + slot * slot_size;
    float* psi_c = base + block_size;  // panel-major Bp x dp: panel q holds columns 16q..16q+15
    float* dv = psi_c + Bp * dp;
    float* c = base + slot_size - Bp;
    // psi_c(b, k) = c_b psi(b, k), zero for padded b or k.
    auto fill_scaled_psi = [&] {
      for (index_t k0 = 0; k0 < dp; k0 += kPanel) {
        float* panel = psi_c + (k0 / kPanel) * Bp * kPanel;
        const index_t kn = std::min(kPanel, d - k0);
        for (index_t b = 0; b < Bp; ++b) {
          float* dst = panel + b * kPanel;
          const index_t valid = b < B ? kn : 0;  // padded rows and columns are 0
          const float cb = c[b];
          const float* src = psi.data() + b * d + k0;
          for (index_t k = 0; k < valid; ++k) dst[k] = cb * src[k];
          for (index_t k = valid; k < kPanel; ++k) dst[k] = 0.0f;
        }
      }
    };
    // Without the buffer the exponentials are exp(z - lse): one scaled psi for all blocks.
    if (!buffered) {
      std::fill_n(c, Bp, 0.0f);
      std::copy_n(coef_.data(), B, c);
      fill_scaled_psi();
    }
    const index_t end = std::min(n, (t + 1) * part.per_task);
    for (index_t j0 = t * part.per_task; j0 < end; j0 += kSimdBlock) {
      const index_t nb = std::min(kSimdBlock, end - j0);
      float* X = block_ptr(j0, slot);
      if (buffered) {
        const float* mk = block_max_.data() + (j0 / kSimdBlock) * Bp;
        std::fill_n(c, Bp, 0.0f);
        for (index_t b = 0; b < B; ++b) c[b] = std::exp(mk[b] - lse_[b]) * coef_[b];
        fill_scaled_psi();
      } else {
        compute_logits(j0, nb, X);
        for (index_t p = 0; p < n_panels; ++p) {
          simd::exp_shifted(X + p * x_ps, nb, kPanel, kPanel, lse_.data() + p * kPanel);
        }
      }
      float* out = direct ? item_grad->dense_weights.data() + j0 * d : dv;
      simd::gemm(nb, dp, Bp, Operand{X, kPanel, 1, x_ps},
                 Operand{psi_c, kPanel, 1, Bp * kPanel}, simd::Output{out, dp}, false);
      if (!direct) {
        for (index_t j = 0; j < nb; ++j) {
          std::copy_n(dv + j * dp, d, item_grad->dense_weights.data() + (j0 + j) * d);
        }
      }
      if (items.bias) {
        for (index_t p = 0; p < n_panels; ++p) {
          simd::row_dots(X + p * x_ps, nb, kPanel, kPanel, c + p * kPanel,
                         item_grad->dense_bias.data() + j0);
        }
      }
    }
  });
  reduce_dpsi(part.n_tasks, Bp, dpsi);
  subtract_targets(psi, items, targets, scale, dpsi, item_grad);
  return loss;
}

// dL/dpsi_b = sum_t exp(m_tb - lse_b) * coef_b * P_t^T(:, b) over the item tasks, in order.
void FullSoftmaxLoss::reduce_dpsi(index_t n_tasks, index_t Bp, MapRowMatrixXf* dpsi) const {
  const index_t B = dpsi->rows(), d = dpsi->cols();
  dpsi->setZero();
  for (index_t t = 0; t < n_tasks; ++t) {
    const float* mt = task_m_.data() + t * Bp;
    const float* P = task_p_.data() + t * d * Bp;
    for (index_t b = 0; b < B; ++b) {
      const float w = std::exp(mt[b] - lse_[b]) * coef_[b];
      for (index_t k = 0; k < d; ++k) (*dpsi)(b, k) += w * P[k * Bp + b];
    }
  }
}

double FullSoftmaxLoss::forward_backward_eigen(const ConstMapRowMatrixXf& psi,
                                               const ItemParamsView& items,
                                               const TargetsView& targets, const LossContext& ctx,
                                               MapRowMatrixXf* dpsi, ItemGradient* item_grad) {
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
  lse_.resize(B);
  merge_lse(row_max_.data(), row_sum_.data(), part.n_tasks, B, B, lse_.data());
  const double loss = positives_loss(psi, items, targets, lse_.data());
  if (!backward) return loss;

  // Pass 2: dV_blk = softmax_blk^T (scale psi) with softmax_bj = E_bj exp(m_blk,b - lse_b): the
  // per-row factor goes into a scaled copy of psi, so the stored E is used as is.
  prepare_dense_gradient(items, item_grad);
  const float scale = ctx.grad_scale;
  fill_coefficients(targets, scale, &coef_);
  const Eigen::Map<const Eigen::VectorXf> lse_vec(lse_.data(), B);
  const Eigen::Map<const Eigen::ArrayXf> coef(coef_.data(), B);
  parallel_for(part.n_tasks, ctx.num_threads, [&](std::int64_t t, int slot) {
    RowMatrixXf& psi_c = scaled_psi_[slot];
    Eigen::VectorXf c(B);
    const index_t end = std::min(n, (t + 1) * part.per_task);
    for (index_t j0 = t * part.per_task; j0 < end; j0 += kBlock) {
      const index_t nb = std::min(kBlock, end - j0);
      StridedMap E = block_logits(j0, nb, slot, !buffered);
      if (buffered) {
        const Eigen::Map<const Eigen::VectorXf> mk(block_max_.data() + (j0 / kBlock) * B, B);
        c = ((mk - lse_vec).array().exp() * coef).matrix();
      } else {
        E.array() = (E.array().colwise() - lse_vec.array()).exp();
        c = coef.matrix();
      }
      psi_c.noalias() = c.asDiagonal() * psi;
      item_grad->dense_weights.middleRows(j0, nb).noalias() = E.transpose() * psi_c;
      if (items.bias) {
        Eigen::Map<Eigen::VectorXf>(item_grad->dense_bias.data() + j0, nb).noalias() =
            E.transpose() * c;
      }
    }
  });
  // dL/dpsi_b = coef_b / S_b * sum_t exp(m_tb - M_b) P_t[b] = coef_b * sum_t exp(m_tb - lse_b) P_t[b].
  dpsi->setZero();
  for (index_t t = 0; t < part.n_tasks; ++t) {
    const Eigen::Map<const Eigen::VectorXf> mt(row_max_.data() + t * B, B);
    dpsi->noalias() += ((mt - lse_vec).array().exp() * coef).matrix().asDiagonal() * partial_dpsi_[t];
  }

  subtract_targets(psi, items, targets, scale, dpsi, item_grad);
  return loss;
}

void distinct_target_items(const TargetsView& targets, std::vector<index_t>* ids) {
  ids->assign(targets.indices, targets.indices + targets.indptr[targets.rows]);
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
}

bool PositivesOnlyLoss::candidates(const TargetsView& targets, const LossContext& ctx,
                                   const float* psi, std::vector<index_t>* ids) {
  distinct_target_items(targets, ids);
  return true;
}

double PositivesOnlyLoss::forward_backward(const ConstMapRowMatrixXf& psi,
                                           const ItemParamsView& items, const TargetsView& targets,
                                           const LossContext& ctx, MapRowMatrixXf* dpsi,
                                           ItemGradient* item_grad) {
  const index_t B = targets.rows;
  const index_t d = items.dim;
  const index_t nnz = targets.indptr[B];
  const bool backward = dpsi != nullptr;
  dz_.resize(static_cast<std::size_t>(nnz));
  row_loss_.resize(static_cast<std::size_t>(B));
  // Per row: softmax over its positives; dz = scale * (m_b softmax - y); dpsi_b = sum_k dz_k V_jk.
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
      const double mass = row_mass(targets.indptr, targets.weights, b);
      for (index_t k = k0; k < k1; ++k) {
        l += targets.weights[k] * (lse - dz_[k]);
        dz_[k] = ctx.grad_scale *
                 static_cast<float>(mass * std::exp(dz_[k] - lse) - targets.weights[k]);
      }
      row_loss_[b] = l;
      if (backward) {
        dpsi->row(b).setZero();
        for (index_t k = k0; k < k1; ++k) {
          dpsi->row(b) += dz_[k] * ConstMapRowMatrixXf(items.row(targets.indices[k]), 1, d);
        }
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
