#include "fastsoftmax/sampled_softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastsoftmax/simd_kernels.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

constexpr float kNegInfF = -std::numeric_limits<float>::infinity();
constexpr index_t kRowsPerTask = 24;  // a multiple of the AVX2 kernel's 6-row tile
constexpr index_t kColsPerTask = 64;

using StridedMap = Eigen::Map<RowMatrixXf, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMatrixXf, 0, Eigen::OuterStride<>>;

float dot(const float* a, const float* b, index_t d) {
  return Eigen::Map<const Eigen::VectorXf>(a, d).dot(Eigen::Map<const Eigen::VectorXf>(b, d));
}

// One evaluation, stage by stage: candidates (the shared draws' rows), gravity's Gramians, then
// per chunk of rows the logits, their correction and masking, the row loss, dL/dz and dL/dpsi,
// and last the item gradient. Every item gradient is assembled one way: as a RowGradient whose
// rows receive their contributions in a fixed order (draws, then target entries, then gravity),
// handed to the optimiser (deferred) or summed into item_grad.
class SampledStep {
 public:
  SampledStep(const SampledBatch& batch, const NegativeDraws& draws, const float* pos_log_q,
              const SampledSoftmaxOptions& options, float grad_scale, int num_threads,
              const SampledGradients& out, SampledSoftmaxWorkspace& ws);

  double run();

 private:
  void gather_candidates();
  double gravity_gramians();
  void rows_pass();
  void chunk_logits(index_t b0, index_t nb);
  void correct_and_mask(index_t b, float* zrow) const;
  void row_loss_and_gradient(index_t b, float* zrow, int slot);
  void chunk_shared_dpsi(index_t b0, index_t nb);
  void shared_draw_products(bool build_in_region);
  void build_shared_rows();
  void build_per_query_rows();
  void hand_over(RowGradient& rg);

  // Row j of V.
  const float* vrow(index_t j) const { return items_view_.row(j); }

  // Inputs.
  const float* psi_;
  ItemParamsView items_view_;
  const float* bias_;
  const index_t *indptr_, *indices_;
  const float* weights_;
  const NegativeDraws& draws_;
  const float* pos_log_q_;
  const SampledGradients& out_;
  SampledSoftmaxWorkspace& ws_;
  index_t B_, d_, m_, n_items_, nnz_;
  int num_threads_;
  float scale_;
  double gamma_;
  // Derived.
  bool shared_, grad_, logq_, remove_hits_, correct_positives_, want_bias_, fast_;
  bool grav_rows_ = false;  // gravity adds dL/dpsi rows and item rows
};

SampledStep::SampledStep(const SampledBatch& batch, const NegativeDraws& draws,
                         const float* pos_log_q, const SampledSoftmaxOptions& options,
                         float grad_scale, int num_threads, const SampledGradients& out,
                         SampledSoftmaxWorkspace& ws)
    : psi_(batch.psi),
      items_view_(batch.items),
      bias_(batch.items.bias),
      indptr_(batch.targets.indptr),
      indices_(batch.targets.indices),
      weights_(batch.targets.weights),
      draws_(draws),
      pos_log_q_(pos_log_q),
      out_(out),
      ws_(ws),
      B_(batch.targets.rows),
      d_(batch.items.dim),
      m_(draws.m),
      n_items_(batch.items.n_items),
      nnz_(batch.targets.indptr[batch.targets.rows]),
      num_threads_(num_threads),
      scale_(grad_scale),
      gamma_(options.gravity) {
  const index_t R = draws.rows;
  if (R != 1 && R != B_) throw_invalid("draws: expected 1 or ", B_, " rows, got ", R);
  if (static_cast<index_t>(draws.ids.size()) != R * m_ ||
      static_cast<index_t>(draws.log_q.size()) != R * m_) {
    throw_invalid("draws: expected ", R * m_, " ids and log_q, got ", draws.ids.size(), " and ",
                  draws.log_q.size());
  }
  shared_ = R == 1;
  grad_ = out.dpsi != nullptr;
  logq_ = options.logq_correction;
  remove_hits_ = options.remove_accidental_hits;
  correct_positives_ = logq_ && !remove_hits_;
  if (correct_positives_ && pos_log_q == nullptr && nnz_ > 0) {
    throw_invalid("pos_log_q: needed when logq_correction and not remove_accidental_hits");
  }
  want_bias_ = bias_ != nullptr && out.item_bias_grad != nullptr;
  // Shared draws whose count and dimension are multiples of 16 take the AVX2 kernel for the three
  // B x m x d products (each output element one FMA chain: independent of the task split).
  fast_ = shared_ && m_ > 0 && m_ % simd::kPanel == 0 && d_ % simd::kPanel == 0 &&
          simd::avx2_fma_available();
}

double SampledStep::run() {
  ws_.z.resize(B_, m_);
  ws_.pos_z.resize(nnz_);
  ws_.row_loss.assign(B_, 0.0);
  gather_candidates();
  const double gravity_loss = gravity_gramians();
  rows_pass();
  double total = 0.0;
  for (index_t b = 0; b < B_; ++b) total += ws_.row_loss[b];
  total += gravity_loss;
  if (!grad_) return total;
  if (grav_rows_) {
    // Item side of gravity: d/dv_s = 2 gamma scale w_s (Psi^T Psi) v_s, one row per draw.
    const RowMatrixXf& Vs = shared_ ? ws_.vs : ws_.grav_rows;
    Eigen::Map<const Eigen::VectorXf> w(ws_.grav_w.data(), m_);
    ws_.tmp.noalias() = (static_cast<float>(2.0 * gamma_) * scale_) *
                        (w.asDiagonal() * (Vs * ws_.gram_queries));
  }
  if (!shared_) {
    build_per_query_rows();
    hand_over(ws_.pq_grad);
    return total;
  }
  // Without bias sums the shared rows are recorded as one more task of the dV_S region.
  const bool build_in_region = out_.deferred_rows != nullptr && !want_bias_ && m_ > 0;
  if (m_ > 0) shared_draw_products(build_in_region);
  if (!build_in_region) build_shared_rows();
  hand_over(ws_.shared_grad);
  return total;
}

// ---- Stage 1, candidates: the shared draws' rows gathered (and, for the kernel, packed in panel
// order: V_S^T (d x m) for Z and V_S (m x d) for dL/dpsi; each task packs its own draws), the
// draws sorted by id (to find accidental hits and to merge with the targets), and their logQ
// offsets log(m Q(s_i)), the same for every row.
void SampledStep::gather_candidates() {
  if (!shared_) return;
  const index_t m = m_, d = d_;
  constexpr index_t kGatherRows = 64;  // a multiple of the panel width
  ws_.vs.resize(m, d);
  ws_.bs.assign(m, 0.0f);
  if (fast_) {
    ws_.packed_vs_t.resize(static_cast<std::size_t>(d * m));
    ws_.packed_vs.resize(static_cast<std::size_t>(m * d));
    if (grad_) ws_.packed_psi.resize(static_cast<std::size_t>(B_ * d));
  }
  constexpr index_t kAhead = 8;
  parallel_for(n_tasks(m, kGatherRows), num_threads_, [&](std::int64_t task, int) {
    const index_t i0 = task * kGatherRows, i1 = std::min(m, i0 + kGatherRows);
    for (index_t i = i0; i < i1; ++i) {
      if (i + kAhead < i1) {  // random rows of the item table: fetch them ahead
        const float* ahead = vrow(draws_.ids[i + kAhead]);
        for (index_t x = 0; x < d; x += 16) __builtin_prefetch(ahead + x);
      }
      const index_t j = draws_.ids[i];
      std::copy_n(vrow(j), d, ws_.vs.data() + i * d);
      if (bias_ != nullptr) ws_.bs[i] = bias_[j];
    }
    if (fast_) {
      simd::pack_panels(ws_.vs.data() + i0 * d, d, i1 - i0, 1, d, ws_.packed_vs_t.data() + i0 * d);
      for (index_t q = 0; q < d / simd::kPanel; ++q) {
        simd::pack_panels(ws_.vs.data() + i0 * d + q * simd::kPanel, i1 - i0, simd::kPanel, d, 1,
                          ws_.packed_vs.data() + q * m * simd::kPanel + i0 * simd::kPanel);
      }
    }
  });
  ws_.sorted.resize(m);
  for (index_t i = 0; i < m; ++i) ws_.sorted[i] = {draws_.ids[i], i};
  std::sort(ws_.sorted.begin(), ws_.sorted.end());
  if (logq_) {
    const double log_m = m > 0 ? std::log(static_cast<double>(m)) : 0.0;
    ws_.shared_offset.resize(m);
    for (index_t i = 0; i < m; ++i) {
      ws_.shared_offset[i] = static_cast<float>(log_m + draws_.log_q[i]);
    }
  }
}

// ---- Gravity: Gram_items = sum_s w_s v_s v_s^T with w_s = 1 / (D n Q(s)) over the D = m draws
// (shared: all of them; per query: row 0's, an unbiased sample on its own that keeps this
// O(m d^2)), Gram_queries over the rows with positives; returns gamma <Gq, Gi>_F and keeps the
// dL/dpsi rows for the row pass.
double SampledStep::gravity_gramians() {
  if (!(gamma_ > 0 && m_ > 0)) return 0.0;
  const index_t D = m_, d = d_;
  ws_.grav_w.resize(D);
  for (index_t i = 0; i < D; ++i) {
    ws_.grav_w[i] = static_cast<float>(std::exp(-static_cast<double>(draws_.log_q[i])) /
                                       (static_cast<double>(D) * static_cast<double>(n_items_)));
  }
  if (!shared_) {
    ws_.grav_rows.resize(D, d);
    for (index_t i = 0; i < D; ++i) {
      ws_.grav_rows.row(i) = ConstMapRowMatrixXf(vrow(draws_.ids[i]), 1, d);
    }
  }
  const RowMatrixXf& Vs = shared_ ? ws_.vs : ws_.grav_rows;
  Eigen::Map<const Eigen::VectorXf> w(ws_.grav_w.data(), D);
  ws_.gram_items.noalias() = Vs.transpose() * (w.asDiagonal() * Vs);
  ConstMapRowMatrixXf Psi(psi_, B_, d);
  index_t nonempty = 0;
  for (index_t b = 0; b < B_; ++b) nonempty += indptr_[b + 1] > indptr_[b];
  if (nonempty == B_) {
    ws_.gram_queries.noalias() = Psi.transpose() * Psi;
  } else {
    ws_.gram_queries.setZero(d, d);
    for (index_t b = 0; b < B_; ++b) {
      if (indptr_[b + 1] > indptr_[b]) {
        ws_.gram_queries.noalias() += Psi.row(b).transpose() * Psi.row(b);
      }
    }
  }
  if (grad_) {
    ws_.grav_dpsi.noalias() = (static_cast<float>(2.0 * gamma_) * scale_) * (Psi * ws_.gram_items);
  }
  grav_rows_ = grad_;
  return gamma_ * static_cast<double>((ws_.gram_queries.array() * ws_.gram_items.array()).sum());
}

// ---- Stages 2-5 per chunk of rows, in one task: logits of the draws; per row corrections and
// masks, the row loss, dL/dz and dpsi from the positives (and gravity); then, for shared draws,
// dpsi += G V_S for the chunk and its rows of psi packed for dL/dV_S.
void SampledStep::rows_pass() {
  ws_.exp_scratch.resize(threads_for(n_tasks(B_, kRowsPerTask), num_threads_));
  for (auto& e : ws_.exp_scratch) e.resize(m_);
  parallel_for(n_tasks(B_, kRowsPerTask), num_threads_, [&](std::int64_t task, int slot) {
    const index_t b0 = task * kRowsPerTask, nb = std::min(kRowsPerTask, B_ - b0);
    // The chunk's positives are random rows of the item table: fetch them during the products.
    for (index_t k = indptr_[b0]; k < indptr_[b0 + nb]; ++k) {
      const float* row = vrow(indices_[k]);
      for (index_t x = 0; x < d_; x += 16) __builtin_prefetch(row + x);
    }
    chunk_logits(b0, nb);
    for (index_t b = b0; b < b0 + nb; ++b) {
      float* zrow = ws_.z.data() + b * m_;
      if (grad_) Eigen::Map<Eigen::RowVectorXf>(out_.dpsi + b * d_, d_).setZero();
      if (indptr_[b] == indptr_[b + 1]) {
        std::fill_n(zrow, m_, 0.0f);
        continue;
      }
      correct_and_mask(b, zrow);
      row_loss_and_gradient(b, zrow, slot);
    }
    if (grad_ && shared_ && m_ > 0) chunk_shared_dpsi(b0, nb);
  });
}

// Stage 2: raw logits z_bi = psi_b . v_s + bias of the chunk's rows.
void SampledStep::chunk_logits(index_t b0, index_t nb) {
  const index_t m = m_, d = d_;
  if (shared_) {
    auto Zb = ws_.z.middleRows(b0, nb);
    if (fast_) {
      simd::gemm(nb, m, d, simd::Operand{psi_ + b0 * d, d},
                 simd::panel_operand(ws_.packed_vs_t.data(), d),
                 simd::Output{ws_.z.data() + b0 * m, m}, false);
    } else {
      Zb.noalias() = ConstMapRowMatrixXf(psi_ + b0 * d, nb, d) * ws_.vs.transpose();
    }
    if (bias_ != nullptr) Zb.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(ws_.bs.data(), m);
    return;
  }
  // Per-query draws: random rows of the item table, fetched kAhead draws ahead (across rows).
  constexpr index_t kAhead = 8;
  const index_t* ids = draws_.ids.data();
  const index_t t1 = (b0 + nb) * m;
  for (index_t t = b0 * m; t < t1; ++t) {
    if (t + kAhead < t1) {
      const float* ahead = vrow(ids[t + kAhead]);
      for (index_t x = 0; x < d; x += 16) __builtin_prefetch(ahead + x);
    }
    const index_t b = t / m;
    ws_.z.data()[t] = dot(psi_ + b * d, vrow(ids[t]), d) + (bias_ ? bias_[ids[t]] : 0.0f);
  }
}

// Stage 3: z - log(m Q(s)) for the draws; accidental hits (draws equal to one of b's positives)
// masked to -inf, or with hits kept, corrected to the expected multiplicity log(1 + m Q).
void SampledStep::correct_and_mask(index_t b, float* zrow) const {
  const index_t m = m_;
  const float* lq = draws_.log_q.data() + (shared_ ? 0 : b * m);
  const index_t* ids = draws_.ids.data() + (shared_ ? 0 : b * m);
  const double log_mb = m > 0 ? std::log(static_cast<double>(m)) : 0.0;
  if (logq_) {
    if (shared_) {
      for (index_t i = 0; i < m; ++i) zrow[i] -= ws_.shared_offset[i];
    } else {
      for (index_t i = 0; i < m; ++i) zrow[i] -= static_cast<float>(log_mb + lq[i]);
    }
  }
  if (!remove_hits_ && !logq_) return;
  auto handle_hit = [&](index_t i) {
    if (remove_hits_) {
      zrow[i] = kNegInfF;
    } else {
      const double lc = log_mb + lq[i];
      zrow[i] += static_cast<float>(lc - std::log1p(std::exp(lc)));
    }
  };
  const index_t k0 = indptr_[b], k1 = indptr_[b + 1];
  if (shared_) {
    for (index_t k = k0; k < k1; ++k) {
      auto it = std::lower_bound(ws_.sorted.begin(), ws_.sorted.end(),
                                 std::pair<index_t, index_t>{indices_[k], 0});
      for (; it != ws_.sorted.end() && it->first == indices_[k]; ++it) handle_hit(it->second);
    }
  } else {
    for (index_t i = 0; i < m; ++i) {
      if (std::binary_search(indices_ + k0, indices_ + k1, ids[i])) handle_hit(i);
    }
  }
}

// Stages 4-5 for row b: the positives' (corrected) logits, the max-shifted log-sum-exp over the
// candidates, the row loss; then dL/dz (into zrow and pos_z) and dpsi_b from the positives, the
// per-query draws and gravity.
void SampledStep::row_loss_and_gradient(index_t b, float* zrow, int slot) {
  const index_t m = m_, d = d_;
  const index_t k0 = indptr_[b], k1 = indptr_[b + 1];
  const double log_mb = m > 0 ? std::log(static_cast<double>(m)) : 0.0;
  float* pz = ws_.pos_z.data();
  for (index_t k = k0; k < k1; ++k) {
    const index_t j = indices_[k];
    double z = dot(psi_ + b * d, vrow(j), d) + (bias_ ? bias_[j] : 0.0f);
    if (correct_positives_) z -= std::log1p(std::exp(log_mb + pos_log_q_[k]));
    pz[k] = static_cast<float>(z);
  }
  // Negatives: Eigen's vectorised exp into the slot's scratch, masked (-inf) entries then set to
  // exactly 0 (Eigen's exp clamps at exp(-88.7) instead of returning 0).
  Eigen::Map<Eigen::ArrayXf> zr(zrow, m);
  Eigen::ArrayXf& e = ws_.exp_scratch[slot];
  float mx = m > 0 ? zr.maxCoeff() : kNegInfF;
  for (index_t k = k0; k < k1; ++k) mx = std::max(mx, pz[k]);
  double s = 0.0;
  for (index_t k = k0; k < k1; ++k) s += std::exp(static_cast<double>(pz[k]) - mx);
  if (m > 0) {
    e = (zr - mx).exp();
    for (index_t i = 0; i < m; ++i) e[i] = zrow[i] == kNegInfF ? 0.0f : e[i];
    s += static_cast<double>(e.sum());
  }
  const double lse = mx + std::log(s);
  double loss = 0.0;
  for (index_t k = k0; k < k1; ++k) loss += weights_[k] * (lse - pz[k]);
  ws_.row_loss[b] = loss;
  if (!grad_) return;
  const double mass = row_mass(indptr_, weights_, b);  // 1 for a target distribution
  if (m > 0) {
    // exp(z_i - lse) = e_i / s (e_i = exp(z_i - mx), masked entries already 0).
    const float f = scale_ * static_cast<float>(mass / s);
    for (index_t i = 0; i < m; ++i) zrow[i] = f * e[i];
  }
  Eigen::Map<Eigen::RowVectorXf> g(out_.dpsi + b * d, d);
  for (index_t k = k0; k < k1; ++k) {
    pz[k] = scale_ * static_cast<float>(mass * std::exp(static_cast<double>(pz[k]) - lse) -
                                        weights_[k]);
    g += pz[k] * Eigen::Map<const Eigen::RowVectorXf>(vrow(indices_[k]), d);
  }
  if (!shared_) {
    const index_t* ids = draws_.ids.data() + b * m;
    for (index_t i = 0; i < m; ++i) {
      if (zrow[i] != 0.0f) g += zrow[i] * Eigen::Map<const Eigen::RowVectorXf>(vrow(ids[i]), d);
    }
  }
  if (grav_rows_) g += ws_.grav_dpsi.row(b);
}

// Stage 5, shared draws: dpsi += G V_S for the chunk's rows; their psi packed for dL/dV_S.
void SampledStep::chunk_shared_dpsi(index_t b0, index_t nb) {
  const index_t m = m_, d = d_;
  if (fast_) {
    simd::gemm(nb, d, m, simd::Operand{ws_.z.data() + b0 * m, m},
               simd::panel_operand(ws_.packed_vs.data(), m), simd::Output{out_.dpsi + b0 * d, d},
               true);
    for (index_t q = 0; q < d / simd::kPanel; ++q) {
      simd::pack_panels(psi_ + b0 * d + q * simd::kPanel, nb, simd::kPanel, d, 1,
                        ws_.packed_psi.data() + q * B_ * simd::kPanel + b0 * simd::kPanel);
    }
  } else {
    MapRowMatrixXf dP(out_.dpsi + b0 * d, nb, d);
    dP.noalias() += ws_.z.middleRows(b0, nb) * ws_.vs;
  }
}

// ---- Stage 6, shared draws: dV_S = G^T Psi and the bias's column sums of G, over fixed column
// tasks; with build_in_region the item rows are recorded by one more task of the same region (it
// records addresses only, so it does not wait for the products).
void SampledStep::shared_draw_products(bool build_in_region) {
  const index_t m = m_, d = d_;
  ws_.dvs.resize(m, d);
  ws_.dbs.assign(m, 0.0f);
  const index_t col_tasks = n_tasks(m, kColsPerTask);
  ConstMapRowMatrixXf Psi(psi_, B_, d);
  parallel_for(col_tasks + (build_in_region ? 1 : 0), num_threads_, [&](std::int64_t task, int) {
    if (task == col_tasks) {
      build_shared_rows();
      return;
    }
    const index_t i0 = task * kColsPerTask, ni = std::min(kColsPerTask, m - i0);
    if (fast_) {
      // dV_S rows i0.. = Z[:, i0..]^T Psi, Z^T read through strides.
      simd::gemm(ni, d, B_, simd::Operand{ws_.z.data() + i0, 1, m, simd::kPanel * m},
                 simd::panel_operand(ws_.packed_psi.data(), B_),
                 simd::Output{ws_.dvs.data() + i0 * d, d}, false);
    } else {
      ws_.dvs.middleRows(i0, ni).noalias() = ws_.z.middleCols(i0, ni).transpose() * Psi;
    }
    if (bias_ != nullptr) {
      for (index_t b = 0; b < B_; ++b) {
        const float* zr = ws_.z.data() + b * m;
        for (index_t i = i0; i < i0 + ni; ++i) ws_.dbs[i] += zr[i];
      }
    }
  });
}

// Shared draws' item rows: the sorted draws merged with the target entries sorted by id; each
// id's contributions in the order draws (by column), target entries, gravity.
void SampledStep::build_shared_rows() {
  const index_t m = m_, d = d_, nnz = nnz_;
  ws_.pos_sorted.resize(static_cast<std::size_t>(nnz));
  for (index_t k = 0; k < nnz; ++k) ws_.pos_sorted[k] = {indices_[k], k};
  std::sort(ws_.pos_sorted.begin(), ws_.pos_sorted.end());
  ws_.pos_row.resize(static_cast<std::size_t>(nnz));
  for (index_t b = 0; b < B_; ++b) {
    for (index_t k = indptr_[b]; k < indptr_[b + 1]; ++k) ws_.pos_row[k] = b;
  }
  RowGradient& rg = ws_.shared_grad;
  rg.reset_sequential(d);
  if (want_bias_) out_.item_bias_grad->clear();
  index_t i = 0, k = 0;
  while (i < m || k < nnz) {
    const index_t id = k == nnz || (i < m && ws_.sorted[i].first <= ws_.pos_sorted[k].first)
                           ? ws_.sorted[i].first
                           : ws_.pos_sorted[k].first;
    rg.append_row(id);
    float bias_grad = 0.0f;
    const index_t i0 = i;
    for (; i < m && ws_.sorted[i].first == id; ++i) {
      const index_t col = ws_.sorted[i].second;
      rg.add_to_last(1.0f, ws_.dvs.data() + col * d);
      if (want_bias_) bias_grad += ws_.dbs[col];
    }
    for (; k < nnz && ws_.pos_sorted[k].first == id; ++k) {
      const index_t e = ws_.pos_sorted[k].second;
      rg.add_to_last(ws_.pos_z[e], psi_ + ws_.pos_row[e] * d);
      if (want_bias_) bias_grad += ws_.pos_z[e];
    }
    if (grav_rows_) {
      for (index_t t = i0; t < i; ++t) rg.add_to_last(1.0f, ws_.tmp.data() + ws_.sorted[t].second * d);
    }
    if (want_bias_) out_.item_bias_grad->push_back(bias_grad);
  }
}

// Per-query draws' item rows, over a slot per item id (rows in first-touch order); each row's
// contributions in the order draws (by row and column), target entries, gravity.
void SampledStep::build_per_query_rows() {
  const index_t m = m_, d = d_;
  RowGradient& rg = ws_.pq_grad;
  rg.reset(n_items_, d);
  if (want_bias_) out_.item_bias_grad->clear();
  // src == nullptr: the row is a candidate without a contribution (a draw whose dL/dz is
  // exactly zero; its gradient row is zero, and the optimiser still steps it).
  auto add = [&](index_t j, float c, const float* src, bool to_bias) {
    const std::int32_t s = src != nullptr ? rg.add(j, c, src) : rg.touch(j);
    if (want_bias_) {
      auto& bg = *out_.item_bias_grad;
      if (s == static_cast<std::int32_t>(bg.size())) bg.push_back(0.0f);
      if (to_bias) bg[static_cast<std::size_t>(s)] += c;
    }
  };
  constexpr index_t kAhead = 16;  // the slot array is read at random: fetch ahead
  const index_t n_draws = static_cast<index_t>(draws_.ids.size());
  for (index_t t = 0; t < n_draws; ++t) {
    if (t + kAhead < n_draws) rg.prefetch(draws_.ids[t + kAhead]);
    const float g = ws_.z.data()[t];
    add(draws_.ids[t], g, g != 0.0f ? psi_ + (t / m) * d : nullptr, g != 0.0f);
  }
  for (index_t b = 0; b < B_; ++b) {
    for (index_t k = indptr_[b]; k < indptr_[b + 1]; ++k) {
      add(indices_[k], ws_.pos_z[k], psi_ + b * d, true);
    }
  }
  if (grav_rows_) {  // gravity's item side: the draws of row 0
    for (index_t i = 0; i < m; ++i) add(draws_.ids[i], 1.0f, ws_.tmp.data() + i * d, false);
  }
}

// The item gradient to the caller: the rows' contributions (deferred) or their sums.
void SampledStep::hand_over(RowGradient& rg) {
  out_.item_rows->assign(rg.rows().begin(), rg.rows().end());
  if (out_.deferred_rows != nullptr) {
    *out_.deferred_rows = &rg;
    return;
  }
  const index_t K = rg.size();
  RowMatrixXf& grad = *out_.item_grad;
  if (grad.rows() < K || grad.cols() != d_) grad.resize(K, d_);
  rg.sum_rows(grad.data(), num_threads_);
}

}  // namespace

double sampled_softmax_forward_backward(const SampledBatch& batch, const NegativeDraws& draws,
                                        const float* pos_log_q,
                                        const SampledSoftmaxOptions& options, float grad_scale,
                                        int num_threads, const SampledGradients& out,
                                        SampledSoftmaxWorkspace& ws) {
  return SampledStep(batch, draws, pos_log_q, options, grad_scale, num_threads, out, ws).run();
}

SampledSoftmax::SampledSoftmax(index_t n_items, const NegativeSamplerOptions& sampler_options,
                               const double* sampler_weights,
                               const SampledSoftmaxOptions& options)
    : sampler_(n_items, sampler_options, sampler_weights), options_(options) {
  if (!(options.gravity >= 0) || !std::isfinite(options.gravity)) {
    throw_invalid("gravity: expected a finite value >= 0, got ", options.gravity);
  }
}

SamplerBatch SampledSoftmax::sampler_batch(const SampledBatch& batch,
                                           const index_t* row_keys) const {
  SamplerBatch sb;
  sb.B = batch.targets.rows;
  sb.dim = batch.items.dim;
  sb.psi = batch.psi;
  sb.items = batch.items.weights;
  sb.bias = batch.items.bias;
  sb.indptr = batch.targets.indptr;
  sb.indices = batch.targets.indices;
  sb.row_keys = row_keys;
  return sb;
}

const NegativeDraws& SampledSoftmax::draw(const SampledBatch& batch, std::uint64_t seed,
                                          int num_threads, const index_t* row_keys) {
  if (sampler_.options().kind == SamplerKind::kScore) {
    throw_invalid("sampler: 'score' draws from the current item embeddings, not before them");
  }
  sampler_.sample(sampler_batch(batch, row_keys), seed, num_threads, draws_);
  predrawn_ = true;
  predrawn_seed_ = seed;
  return draws_;
}

double SampledSoftmax::forward_backward(const SampledBatch& batch, std::uint64_t seed,
                                        float grad_scale, int num_threads,
                                        const SampledGradients& out, const index_t* row_keys) {
  const index_t B = batch.targets.rows, d = batch.items.dim;
  const float* psi = batch.psi;
  const float* bias = batch.items.bias;
  const index_t* indptr = batch.targets.indptr;
  const index_t* indices = batch.targets.indices;
  if (!(predrawn_ && predrawn_seed_ == seed)) {
    sampler_.sample(sampler_batch(batch, row_keys), seed, num_threads, draws_);
  }
  predrawn_ = false;
  const index_t nnz = indptr[B];
  const float* pos_log_q = nullptr;
  if (options_.logq_correction && !options_.remove_accidental_hits) {
    pos_log_q_.resize(nnz);
    const bool score = sampler_.options().kind == SamplerKind::kScore;
    const bool shared = draws_.rows == 1;
    parallel_for(n_tasks(B, kRowsPerTask), num_threads, [&](std::int64_t task, int) {
      std::vector<float> z_col(score ? B : 0);
      const index_t b1 = std::min(B, (task + 1) * kRowsPerTask);
      for (index_t b = task * kRowsPerTask; b < b1; ++b) {
        for (index_t k = indptr[b]; k < indptr[b + 1]; ++k) {
          const index_t j = indices[k];
          if (score) {
            const float bj = bias ? bias[j] : 0.0f;
            for (index_t r = 0; r < B; ++r) {
              if (shared || r == b) z_col[r] = dot(psi + r * d, batch.items.row(j), d) + bj;
            }
          }
          pos_log_q_[k] = static_cast<float>(sampler_.log_q(draws_, b, j, z_col.data()));
        }
      }
    });
    pos_log_q = pos_log_q_.data();
  }
  return sampled_softmax_forward_backward(batch, draws_, pos_log_q, options_, grad_scale,
                                          num_threads, out, ws_);
}

double gravity_exact(const float* psi, index_t B, index_t d, const float* items, index_t n_items,
                     double gamma, float grad_scale, int num_threads, float* dpsi, float* dV) {
  if (gamma <= 0 || B == 0) return 0.0;
  ConstMapRowMatrixXf Psi(psi, B, d);
  // V^T V over fixed item blocks, reduced in block order.
  constexpr index_t kBlock = 4096;
  const index_t tasks = n_tasks(n_items, kBlock);
  std::vector<RowMatrixXf> partial(static_cast<std::size_t>(tasks));
  parallel_for(tasks, num_threads, [&](std::int64_t t, int) {
    const index_t j0 = t * kBlock, nj = std::min(kBlock, n_items - j0);
    ConstMapRowMatrixXf V(items + j0 * d, nj, d);
    partial[t].noalias() = V.transpose() * V;
  });
  RowMatrixXf gram_items = RowMatrixXf::Zero(d, d);
  for (const auto& p : partial) gram_items += p;
  gram_items /= static_cast<float>(n_items);
  const RowMatrixXf gram_queries = Psi.transpose() * Psi;
  const double loss =
      gamma * static_cast<double>((gram_queries.array() * gram_items.array()).sum());
  const float c = static_cast<float>(2.0 * gamma) * grad_scale;
  if (dpsi != nullptr) MapRowMatrixXf(dpsi, B, d).noalias() += c * (Psi * gram_items);
  if (dV != nullptr) {
    const RowMatrixXf Cq = (c / static_cast<float>(n_items)) * gram_queries;
    parallel_for(tasks, num_threads, [&](std::int64_t t, int) {
      const index_t j0 = t * kBlock, nj = std::min(kBlock, n_items - j0);
      ConstMapRowMatrixXf V(items + j0 * d, nj, d);
      MapRowMatrixXf(dV + j0 * d, nj, d).noalias() += V * Cq;
    });
  }
  return loss;
}

}  // namespace fastsoftmax
