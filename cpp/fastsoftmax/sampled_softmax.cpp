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

index_t n_tasks(index_t n, index_t per_task) { return (n + per_task - 1) / per_task; }

using StridedMap = Eigen::Map<RowMatrixXf, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMatrixXf, 0, Eigen::OuterStride<>>;

float dot(const float* a, const float* b, index_t d) {
  return Eigen::Map<const Eigen::VectorXf>(a, d).dot(Eigen::Map<const Eigen::VectorXf>(b, d));
}

}  // namespace

double sampled_softmax_forward_backward(const float* psi, index_t B, index_t d, const float* items,
                                        const float* bias, index_t n_items, const index_t* indptr,
                                        const index_t* indices, const float* weights,
                                        const NegativeDraws& draws, const float* pos_log_q,
                                        const SampledSoftmaxOptions& options, float grad_scale,
                                        int num_threads, float* dpsi,
                                        std::vector<index_t>* item_rows, RowMatrixXf* item_grad,
                                        std::vector<float>* item_bias_grad,
                                        SampledSoftmaxWorkspace& ws,
                                        RowGradient** deferred_rows) {
  const index_t m = draws.m;
  const index_t R = draws.rows;
  if (R != 1 && R != B) throw_invalid("draws: expected 1 or ", B, " rows, got ", R);
  if (static_cast<index_t>(draws.ids.size()) != R * m ||
      static_cast<index_t>(draws.log_q.size()) != R * m) {
    throw_invalid("draws: expected ", R * m, " ids and log_q, got ", draws.ids.size(), " and ",
                  draws.log_q.size());
  }
  const bool shared = R == 1;
  const bool grad = dpsi != nullptr;
  const bool logq = options.logq_correction;
  const bool remove_hits = options.remove_accidental_hits;
  const bool correct_positives = logq && !remove_hits;
  if (correct_positives && pos_log_q == nullptr && indptr[B] > 0) {
    throw_invalid("pos_log_q: needed when logq_correction and not remove_accidental_hits");
  }
  const double gamma = options.gravity;
  const float scale = grad_scale;
  const index_t nnz = indptr[B];

  ConstMapRowMatrixXf Psi(psi, B, d);
  // Shared draws whose count and dimension are multiples of 16 take the AVX2 kernel for the three
  // B x m x d products (each output element one FMA chain: independent of the task split).
  const bool fast = shared && m > 0 && m % simd::kPanel == 0 && d % simd::kPanel == 0 &&
                    simd::avx2_fma_available();
  ws.z.resize(B, m);
  ws.pos_z.resize(nnz);
  ws.row_loss.assign(B, 0.0);

  // ---- Gather the shared draws' rows (and, for the kernel, pack them in panel order: V_S^T
  // (d x m) for Z and V_S (m x d) for dL/dpsi; each task packs its own draws' panel columns/rows).
  constexpr index_t kGatherRows = 64;  // a multiple of the panel width
  if (shared) {
    ws.vs.resize(m, d);
    ws.bs.assign(m, 0.0f);
    if (fast) {
      ws.packed_vs_t.resize(static_cast<std::size_t>(d * m));
      ws.packed_vs.resize(static_cast<std::size_t>(m * d));
      if (grad) ws.packed_psi.resize(static_cast<std::size_t>(B * d));
    }
    constexpr index_t kAhead = 8;
    parallel_for(n_tasks(m, kGatherRows), num_threads, [&](std::int64_t task, int) {
      const index_t i0 = task * kGatherRows, i1 = std::min(m, i0 + kGatherRows);
      for (index_t i = i0; i < i1; ++i) {
        if (i + kAhead < i1) {  // random rows of the item table: fetch them ahead
          const float* ahead = items + draws.ids[i + kAhead] * d;
          for (index_t x = 0; x < d; x += 16) __builtin_prefetch(ahead + x);
        }
        const index_t j = draws.ids[i];
        std::copy_n(items + j * d, d, ws.vs.data() + i * d);
        if (bias != nullptr) ws.bs[i] = bias[j];
      }
      if (fast) {
        simd::pack_panels(ws.vs.data() + i0 * d, d, i1 - i0, 1, d,
                          ws.packed_vs_t.data() + i0 * d);
        for (index_t q = 0; q < d / simd::kPanel; ++q) {
          simd::pack_panels(ws.vs.data() + i0 * d + q * simd::kPanel, i1 - i0, simd::kPanel, d, 1,
                            ws.packed_vs.data() + q * m * simd::kPanel + i0 * simd::kPanel);
        }
      }
    });
    // (id, column) pairs sorted by id, to find each positive's accidental hits.
    ws.sorted.resize(m);
    for (index_t i = 0; i < m; ++i) ws.sorted[i] = {draws.ids[i], i};
    std::sort(ws.sorted.begin(), ws.sorted.end());
  }
  // Shared draws: the logQ offsets log(m Q(s_i)) are the same for all rows (computed once).
  if (logq && shared) {
    const double log_m = m > 0 ? std::log(static_cast<double>(m)) : 0.0;
    ws.shared_offset.resize(m);
    for (index_t i = 0; i < m; ++i) {
      ws.shared_offset[i] = static_cast<float>(log_m + draws.log_q[i]);
    }
  }

  // ---- Gravity on the draws: Gram_items = sum_s w_s v_s v_s^T, w_s = 1 / (D n Q(s)).
  // Shared: all m draws (D = m). Per query: the draws of row 0 (each row's draws are an unbiased
  // sample on their own; using one row keeps this O(m d^2)). Computed before the row pass, which
  // adds the query side's gradient rows.
  std::vector<float> grav_w;
  const RowMatrixXf* Vs = &ws.vs;
  RowMatrixXf rows_s;
  double gravity_loss = 0.0;
  if (gamma > 0 && m > 0) {
    const index_t D = m;
    grav_w.resize(D);
    for (index_t i = 0; i < D; ++i) {
      grav_w[i] = static_cast<float>(std::exp(-static_cast<double>(draws.log_q[i])) /
                                     (static_cast<double>(D) * static_cast<double>(n_items)));
    }
    if (!shared) {
      rows_s.resize(D, d);
      for (index_t i = 0; i < D; ++i) rows_s.row(i) = ConstMapRowMatrixXf(items + draws.ids[i] * d, 1, d);
      Vs = &rows_s;
    }
    Eigen::Map<const Eigen::VectorXf> w(grav_w.data(), D);
    ws.gram_items.noalias() = Vs->transpose() * (w.asDiagonal() * (*Vs));
    // Query side over the rows that have positives.
    index_t nonempty = 0;
    for (index_t b = 0; b < B; ++b) nonempty += indptr[b + 1] > indptr[b];
    if (nonempty == B) {
      ws.gram_queries.noalias() = Psi.transpose() * Psi;
    } else {
      ws.gram_queries.setZero(d, d);
      for (index_t b = 0; b < B; ++b) {
        if (indptr[b + 1] > indptr[b]) ws.gram_queries.noalias() += Psi.row(b).transpose() * Psi.row(b);
      }
    }
    gravity_loss = gamma * static_cast<double>((ws.gram_queries.array() * ws.gram_items.array()).sum());
    if (grad) ws.grav_dpsi.noalias() = (static_cast<float>(2.0 * gamma) * scale) * (Psi * ws.gram_items);
  }
  const bool grav_rows = grad && !grav_w.empty();

  // ---- Per chunk of rows, in one task: logits of the draws; corrections, masks, log-sum-exp,
  // loss, dL/dz and dpsi from the positives (and the gravity rows); then dpsi += G V_S for shared
  // draws, and the chunk's rows of psi packed for dL/dV_S.
  ws.exp_scratch.resize(threads_for(n_tasks(B, kRowsPerTask), num_threads));
  for (auto& e : ws.exp_scratch) e.resize(m);
  parallel_for(n_tasks(B, kRowsPerTask), num_threads, [&](std::int64_t task, int slot) {
    const index_t b0 = task * kRowsPerTask, nb = std::min(kRowsPerTask, B - b0);
    const index_t b1 = b0 + nb;
    // The chunk's positives are random rows of the item table: fetch them during the products.
    for (index_t k = indptr[b0]; k < indptr[b1]; ++k) {
      const float* row = items + indices[k] * d;
      for (index_t x = 0; x < d; x += 16) __builtin_prefetch(row + x);
    }
    if (shared) {
      auto Zb = ws.z.middleRows(b0, nb);
      if (fast) {
        simd::gemm(nb, m, d, simd::Operand{psi + b0 * d, d},
                   simd::panel_operand(ws.packed_vs_t.data(), d),
                   simd::Output{ws.z.data() + b0 * m, m}, false);
      } else {
        Zb.noalias() = Psi.middleRows(b0, nb) * ws.vs.transpose();
      }
      if (bias != nullptr) {
        Zb.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(ws.bs.data(), m);
      }
    } else {
      // Random rows of the item table, fetched kAhead draws ahead (across rows).
      constexpr index_t kAhead = 8;
      const index_t* ids = draws.ids.data();
      for (index_t t = b0 * m; t < b1 * m; ++t) {
        if (t + kAhead < b1 * m) {
          const float* ahead = items + ids[t + kAhead] * d;
          for (index_t x = 0; x < d; x += 16) __builtin_prefetch(ahead + x);
        }
        const index_t b = t / m;
        ws.z.data()[t] = dot(psi + b * d, items + ids[t] * d, d) + (bias ? bias[ids[t]] : 0.0f);
      }
    }
    for (index_t b = b0; b < b1; ++b) {
      float* zrow = ws.z.data() + b * m;
      const index_t k0 = indptr[b], k1 = indptr[b + 1];
      if (grad) Eigen::Map<Eigen::RowVectorXf>(dpsi + b * d, d).setZero();
      if (k0 == k1) {
        std::fill_n(zrow, m, 0.0f);
        continue;
      }
      const float* lq = draws.log_q.data() + (shared ? 0 : b * m);
      const index_t* ids = draws.ids.data() + (shared ? 0 : b * m);
      const double log_mb = m > 0 ? std::log(static_cast<double>(m)) : 0.0;
      if (logq) {
        if (shared) {
          for (index_t i = 0; i < m; ++i) zrow[i] -= ws.shared_offset[i];
        } else {
          for (index_t i = 0; i < m; ++i) zrow[i] -= static_cast<float>(log_mb + lq[i]);
        }
      }
      // Accidental hits: draws equal to one of b's positives.
      auto handle_hit = [&](index_t i) {
        if (remove_hits) {
          zrow[i] = kNegInfF;
        } else if (logq) {
          const double lc = log_mb + lq[i];
          zrow[i] += static_cast<float>(lc - std::log1p(std::exp(lc)));
        }
      };
      if (remove_hits || logq) {
        if (shared) {
          for (index_t k = k0; k < k1; ++k) {
            auto it = std::lower_bound(ws.sorted.begin(), ws.sorted.end(),
                                       std::pair<index_t, index_t>{indices[k], 0});
            for (; it != ws.sorted.end() && it->first == indices[k]; ++it) handle_hit(it->second);
          }
        } else {
          for (index_t i = 0; i < m; ++i) {
            if (std::binary_search(indices + k0, indices + k1, ids[i])) handle_hit(i);
          }
        }
      }
      // Positives.
      float* pz = ws.pos_z.data();
      for (index_t k = k0; k < k1; ++k) {
        const index_t j = indices[k];
        double z = dot(psi + b * d, items + j * d, d) + (bias ? bias[j] : 0.0f);
        if (correct_positives) z -= std::log1p(std::exp(log_mb + pos_log_q[k]));
        pz[k] = static_cast<float>(z);
      }
      // Max-shifted log-sum-exp over the candidates. Negatives: Eigen's vectorised exp into the
      // slot's scratch, masked (-inf) entries then set to exactly 0 (Eigen's exp clamps at
      // exp(-88.7) instead of returning 0).
      Eigen::Map<Eigen::ArrayXf> zr(zrow, m);
      Eigen::ArrayXf& e = ws.exp_scratch[slot];
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
      for (index_t k = k0; k < k1; ++k) loss += weights[k] * (lse - pz[k]);
      ws.row_loss[b] = loss;
      if (!grad) continue;
      const double mass = row_mass(indptr, weights, b);  // 1 for a target distribution
      if (m > 0) {
        // exp(z_i - lse) = e_i / s (e_i = exp(z_i - mx), masked entries already 0).
        const float f = scale * static_cast<float>(mass / s);
        for (index_t i = 0; i < m; ++i) zrow[i] = f * e[i];
      }
      Eigen::Map<Eigen::RowVectorXf> g(dpsi + b * d, d);
      for (index_t k = k0; k < k1; ++k) {
        pz[k] = scale * static_cast<float>(mass * std::exp(static_cast<double>(pz[k]) - lse) -
                                           weights[k]);
        g += pz[k] * Eigen::Map<const Eigen::RowVectorXf>(items + indices[k] * d, d);
      }
      if (!shared) {
        for (index_t i = 0; i < m; ++i) {
          if (zrow[i] != 0.0f) {
            g += zrow[i] * Eigen::Map<const Eigen::RowVectorXf>(items + ids[i] * d, d);
          }
        }
      }
      if (grav_rows) g += ws.grav_dpsi.row(b);
    }
    if (!grad || !shared || m == 0) return;
    // dpsi += G V_S for the chunk's rows.
    if (fast) {
      simd::gemm(nb, d, m, simd::Operand{ws.z.data() + b0 * m, m},
                 simd::panel_operand(ws.packed_vs.data(), m), simd::Output{dpsi + b0 * d, d},
                 true);
      for (index_t q = 0; q < d / simd::kPanel; ++q) {
        simd::pack_panels(psi + b0 * d + q * simd::kPanel, nb, simd::kPanel, d, 1,
                          ws.packed_psi.data() + q * B * simd::kPanel + b0 * simd::kPanel);
      }
    } else {
      MapRowMatrixXf dP(dpsi + b0 * d, nb, d);
      dP.noalias() += ws.z.middleRows(b0, nb) * ws.vs;
    }
  });
  double total = 0.0;
  for (index_t b = 0; b < B; ++b) total += ws.row_loss[b];
  total += gravity_loss;
  if (!grad) return total;
  if (!grav_w.empty()) {
    // Item side of gravity: d/dv_s = 2 gamma scale w_s (Psi^T Psi) v_s, one row per draw.
    Eigen::Map<const Eigen::VectorXf> w(grav_w.data(), m);
    ws.tmp.noalias() = (static_cast<float>(2.0 * gamma) * scale) * (w.asDiagonal() * ((*Vs) * ws.gram_queries));
  }

  const bool want_bias = bias != nullptr && item_bias_grad != nullptr;
  // Shared draws, fit: each key's contributions recorded in that order (the merge visits a key's
  // draws, then its target entries), summed by the optimiser as it steps the row. Only addresses
  // are recorded: without bias sums this runs as one more task of the dV region below.
  // The batch's target entries as (item id, entry) sorted by id: merged with the sorted draws.
  auto sort_positives = [&]() {
    ws.pos_sorted.resize(static_cast<std::size_t>(nnz));
    for (index_t k = 0; k < nnz; ++k) ws.pos_sorted[k] = {indices[k], k};
    std::sort(ws.pos_sorted.begin(), ws.pos_sorted.end());
  };
  auto build_shared_deferred = [&]() {
    sort_positives();
    ws.pos_row.resize(static_cast<std::size_t>(nnz));
    for (index_t b = 0; b < B; ++b) {
      for (index_t k = indptr[b]; k < indptr[b + 1]; ++k) ws.pos_row[k] = b;
    }
    RowGradient& rg = ws.shared_grad;
    rg.reset_sequential(d);
    item_rows->clear();
    if (want_bias) item_bias_grad->clear();
    index_t i = 0, k = 0;
    while (i < m || k < nnz) {
      const index_t id = k == nnz || (i < m && ws.sorted[i].first <= ws.pos_sorted[k].first)
                             ? ws.sorted[i].first
                             : ws.pos_sorted[k].first;
      rg.append_row(id);
      item_rows->push_back(id);
      float bias_grad = 0.0f;
      const index_t i0 = i;
      for (; i < m && ws.sorted[i].first == id; ++i) {
        const index_t col = ws.sorted[i].second;
        rg.add_to_last(1.0f, ws.dvs.data() + col * d);
        if (want_bias) bias_grad += ws.dbs[col];
      }
      for (; k < nnz && ws.pos_sorted[k].first == id; ++k) {
        const index_t e = ws.pos_sorted[k].second;
        rg.add_to_last(ws.pos_z[e], psi + ws.pos_row[e] * d);
        if (want_bias) bias_grad += ws.pos_z[e];
      }
      if (!grav_w.empty()) {  // gravity's item side
        for (index_t t = i0; t < i; ++t) rg.add_to_last(1.0f, ws.tmp.data() + ws.sorted[t].second * d);
      }
      if (want_bias) item_bias_grad->push_back(bias_grad);
    }
  };
  const bool build_in_region = shared && deferred_rows != nullptr && !want_bias && m > 0;

  // ---- Shared draws: dV_S = G^T Psi, bias: column sums of G.
  if (shared && m > 0) {
    ws.dvs.resize(m, d);
    ws.dbs.assign(m, 0.0f);
    const index_t col_tasks = n_tasks(m, kColsPerTask);
    parallel_for(col_tasks + (build_in_region ? 1 : 0), num_threads, [&](std::int64_t task, int) {
      if (task == col_tasks) {
        build_shared_deferred();
        return;
      }
      const index_t i0 = task * kColsPerTask, ni = std::min(kColsPerTask, m - i0);
      if (fast) {
        // dV_S rows i0.. = Z[:, i0..]^T Psi, Z^T read through strides.
        simd::gemm(ni, d, B, simd::Operand{ws.z.data() + i0, 1, m, simd::kPanel * m},
                   simd::panel_operand(ws.packed_psi.data(), B),
                   simd::Output{ws.dvs.data() + i0 * d, d}, false);
      } else {
        ws.dvs.middleRows(i0, ni).noalias() = ws.z.middleCols(i0, ni).transpose() * Psi;
      }
      if (bias != nullptr) {
        for (index_t b = 0; b < B; ++b) {
          const float* zr = ws.z.data() + b * m;
          for (index_t i = i0; i < i0 + ni; ++i) ws.dbs[i] += zr[i];
        }
      }
    });
  }

  if (!shared) {
    // ---- Per-query draws: a RowGradient over the item ids (rows in first-touch order). Each
    // row's contributions in a fixed order (draws by row and column, then target entries, then
    // gravity), summed row by row in parallel: independent of the thread count.
    RowGradient& rg = ws.pq_grad;
    rg.reset(n_items, d);
    if (want_bias) item_bias_grad->clear();
    // src == nullptr: the row is a candidate without a contribution (a draw whose dL/dz is
    // exactly zero; its gradient row is zero, and the optimiser still steps it).
    auto add = [&](index_t j, float c, const float* src, bool to_bias) {
      const std::int32_t s = src != nullptr ? rg.add(j, c, src) : rg.touch(j);
      if (want_bias) {
        if (s == static_cast<std::int32_t>(item_bias_grad->size())) item_bias_grad->push_back(0.0f);
        if (to_bias) (*item_bias_grad)[static_cast<std::size_t>(s)] += c;
      }
    };
    constexpr index_t kAhead = 16;  // the slot array is read at random: fetch ahead
    const index_t n_draws = static_cast<index_t>(draws.ids.size());
    for (index_t t = 0; t < n_draws; ++t) {
      if (t + kAhead < n_draws) rg.prefetch(draws.ids[t + kAhead]);
      const float g = ws.z.data()[t];
      const index_t b = t / m;
      add(draws.ids[t], g, g != 0.0f ? psi + b * d : nullptr, g != 0.0f);
    }
    for (index_t b = 0; b < B; ++b) {
      for (index_t k = indptr[b]; k < indptr[b + 1]; ++k) {
        add(indices[k], ws.pos_z[k], psi + b * d, true);
      }
    }
    if (!grav_w.empty()) {
      // Gravity's item side: the draws of row 0.
      for (index_t i = 0; i < m; ++i) add(draws.ids[i], 1.0f, ws.tmp.data() + i * d, false);
    }
    item_rows->assign(rg.rows().begin(), rg.rows().end());
    if (deferred_rows != nullptr) {
      *deferred_rows = &rg;
      return total;
    }
    const index_t K = rg.size();
    if (item_grad->rows() < K || item_grad->cols() != d) item_grad->resize(K, d);
    rg.sum_rows(item_grad->data(), num_threads);
    return total;
  }
  // ---- Shared draws: row-sparse item gradient over the sorted unique candidate ids (the
  // draws, already sorted by id, merged with the sorted target entries); contributions in a
  // fixed order (draws by column, then target entries, then gravity), each row zeroed at its
  // first one.
  if (deferred_rows != nullptr) {
    if (!build_in_region) build_shared_deferred();
    *deferred_rows = &ws.shared_grad;
    return total;
  }
  const index_t n_draws = static_cast<index_t>(draws.ids.size());
  sort_positives();
  ws.slot.resize(static_cast<std::size_t>(n_draws + nnz));  // draws' slots, then the targets'
  ws.keys.clear();
  {
    index_t i = 0, k = 0;
    while (i < m || k < nnz) {
      const bool draw = k == nnz || (i < m && ws.sorted[i].first <= ws.pos_sorted[k].first);
      const index_t id = draw ? ws.sorted[i].first : ws.pos_sorted[k].first;
      if (ws.keys.empty() || ws.keys.back() != id) ws.keys.push_back(id);
      const index_t s = static_cast<index_t>(ws.keys.size()) - 1;
      if (draw) {
        ws.slot[ws.sorted[i++].second] = s;
      } else {
        ws.slot[n_draws + ws.pos_sorted[k++].second] = s;
      }
    }
  }
  const index_t K = static_cast<index_t>(ws.keys.size());
  item_rows->assign(ws.keys.begin(), ws.keys.end());
  if (item_grad->rows() < K || item_grad->cols() != d) item_grad->resize(K, d);
  ws.row_set.assign(static_cast<std::size_t>(K), 0);
  auto row = [&](index_t s) {
    if (!ws.row_set[s]) {
      ws.row_set[s] = 1;
      item_grad->row(s).setZero();
    }
    return item_grad->row(s);
  };
  if (want_bias) item_bias_grad->assign(K, 0.0f);
  for (index_t i = 0; i < m; ++i) {
    const index_t s = ws.slot[i];
    row(s) += ws.dvs.row(i);
    if (want_bias) (*item_bias_grad)[s] += ws.dbs[i];
  }
  for (index_t b = 0; b < B; ++b) {
    for (index_t k = indptr[b]; k < indptr[b + 1]; ++k) {
      const index_t s = ws.slot[n_draws + k];
      row(s) += ws.pos_z[k] * Psi.row(b);
      if (want_bias) (*item_bias_grad)[s] += ws.pos_z[k];
    }
  }
  if (!grav_w.empty()) {
    for (index_t i = 0; i < m; ++i) row(ws.slot[i]) += ws.tmp.row(i);  // gravity's item side
  }
  // (Every key is a draw or a target entry, so every row has been set.)
  return total;
}

SampledSoftmax::SampledSoftmax(index_t n_items, const NegativeSamplerOptions& sampler_options,
                               const double* sampler_weights,
                               const SampledSoftmaxOptions& options)
    : sampler_(n_items, sampler_options, sampler_weights), options_(options) {
  if (!(options.gravity >= 0) || !std::isfinite(options.gravity)) {
    throw_invalid("gravity: expected a finite value >= 0, got ", options.gravity);
  }
}

double SampledSoftmax::forward_backward(const float* psi, index_t B, index_t d, const float* items,
                                        const float* bias, const index_t* indptr,
                                        const index_t* indices, const float* weights,
                                        std::uint64_t seed, float grad_scale, int num_threads,
                                        float* dpsi, std::vector<index_t>* item_rows,
                                        RowMatrixXf* item_grad,
                                        std::vector<float>* item_bias_grad,
                                        RowGradient** deferred_rows, const index_t* row_keys) {
  SamplerBatch batch;
  batch.B = B;
  batch.dim = d;
  batch.psi = psi;
  batch.items = items;
  batch.bias = bias;
  batch.indptr = indptr;
  batch.indices = indices;
  batch.row_keys = row_keys;
  sampler_.sample(batch, seed, num_threads, draws_);
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
              if (shared || r == b) z_col[r] = dot(psi + r * d, items + j * d, d) + bj;
            }
          }
          pos_log_q_[k] = static_cast<float>(sampler_.log_q(draws_, b, j, z_col.data()));
        }
      }
    });
    pos_log_q = pos_log_q_.data();
  }
  return sampled_softmax_forward_backward(psi, B, d, items, bias, sampler_.n_items(), indptr,
                                          indices, weights, draws_, pos_log_q, options_,
                                          grad_scale, num_threads, dpsi, item_rows, item_grad,
                                          item_bias_grad, ws_, deferred_rows);
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
