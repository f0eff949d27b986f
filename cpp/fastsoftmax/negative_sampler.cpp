#include "fastsoftmax/negative_sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastsoftmax/random.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

// One uniform item id in [0, n).
index_t uniform_id(Rng& rng, index_t n) {
  return static_cast<index_t>(rng.uniform_int(static_cast<std::uint64_t>(n)));
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr index_t kRowsPerTask = 16;     // query rows per task (scoring, per-row draws)
constexpr index_t kItemsPerTask = 2048;  // items per task (exact scoring)
constexpr std::uint64_t kStreamShared = 0, kStreamUniform = 1, kStreamResample = 2,
                        kStreamRow0 = 3;

// The stream of batch row b's own draws (per-query sampling).
std::uint64_t row_stream(const SamplerBatch& batch, index_t b) {
  return kStreamRow0 + static_cast<std::uint64_t>(batch.row_keys ? batch.row_keys[b] : b);
}

// Logits of the items `rows` (count x dim, row-major, ids for the bias) for all B queries into
// out (B x count, leading dimension ld). Parallel over fixed row blocks of the queries.
void score_block(const SamplerBatch& batch, const float* rows, const index_t* ids, index_t count,
                 float* out, index_t ld, int num_threads) {
  const index_t d = batch.dim;
  ConstMapRowMatrixXf V(rows, count, d);
  parallel_for(n_tasks(batch.B, kRowsPerTask), num_threads, [&](std::int64_t task, int) {
    const index_t b0 = task * kRowsPerTask;
    const index_t nb = std::min(kRowsPerTask, batch.B - b0);
    ConstMapRowMatrixXf P(batch.psi + b0 * d, nb, d);
    Eigen::Map<RowMatrixXf, 0, Eigen::OuterStride<>> Z(out + b0 * ld, nb, count,
                                                        Eigen::OuterStride<>(ld));
    Z.noalias() = P * V.transpose();
    if (batch.bias != nullptr) {
      for (index_t i = 0; i < count; ++i) {
        const float bi = batch.bias[ids[i]];
        for (index_t r = 0; r < nb; ++r) Z(r, i) += bi;
      }
    }
  });
}

// Index of the first cdf entry > u (cdf non-decreasing, u < cdf.back()); skips zero-mass items.
index_t search_cdf(const double* cdf, index_t n, double u) {
  const index_t k = static_cast<index_t>(std::upper_bound(cdf, cdf + n, u) - cdf);
  return std::min(k, n - 1);
}

// For the columns [i0, i1) of Z (B x ld): out[i] = log mean_b exp(Z[b, i] * inv_t - log_norm[b]),
// max-shifted per column (finite for any finite logits). Float exponentials (Eigen, vectorised).
void log_mean_exp_columns(const float* Z, index_t B, index_t ld, index_t i0, index_t i1,
                          double inv_t, const std::vector<double>& log_norm, double* out) {
  using Arr = Eigen::ArrayXf;
  const index_t w = i1 - i0;
  const float it = static_cast<float>(inv_t);
  Arr mx = Arr::Constant(w, -std::numeric_limits<float>::infinity());
  for (index_t b = 0; b < B; ++b) {
    mx = mx.max(Eigen::Map<const Arr>(Z + b * ld + i0, w) * it - static_cast<float>(log_norm[b]));
  }
  Arr sum = Arr::Zero(w);
  for (index_t b = 0; b < B; ++b) {
    sum += (Eigen::Map<const Arr>(Z + b * ld + i0, w) * it - static_cast<float>(log_norm[b]) - mx)
               .exp();
  }
  const double log_b = std::log(static_cast<double>(B));
  for (index_t i = 0; i < w; ++i) out[i0 + i] = mx[i] + std::log(double{sum[i]}) - log_b;
}

// log sum_i exp(z_i * inv_t - offset_i) (offset may be nullptr), max-shifted; float exponentials
// (Eigen, vectorised), summed in float lanes then double.
double log_sum_exp_scaled(const float* z, index_t n, double inv_t, const float* offset) {
  using Arr = Eigen::ArrayXf;
  Eigen::Map<const Arr> zz(z, n);
  const float it = static_cast<float>(inv_t);
  Arr v = zz * it;
  if (offset != nullptr) v -= Eigen::Map<const Arr>(offset, n);
  const float mx = v.maxCoeff();
  if (!std::isfinite(mx)) return mx;
  return mx + std::log(static_cast<double>((v - mx).exp().sum()));
}

// cdf[i] = sum_{k <= i} exp(v_k - shift) for v = z * inv_t - offset (offset may be nullptr); the
// exponentials in float (vectorised, into `scratch`), the running sum in double. Returns the total.
double exp_cdf(const float* z, index_t n, double inv_t, const float* offset, double shift,
               Eigen::ArrayXf& scratch, double* cdf) {
  using Arr = Eigen::ArrayXf;
  scratch = Eigen::Map<const Arr>(z, n) * static_cast<float>(inv_t);
  if (offset != nullptr) scratch -= Eigen::Map<const Arr>(offset, n);
  scratch = (scratch - static_cast<float>(shift)).exp();
  double acc = 0.0;
  for (index_t i = 0; i < n; ++i) cdf[i] = (acc += scratch[i]);
  return acc;
}

}  // namespace

SamplerKind parse_sampler_kind(const std::string& name) {
  if (name == "uniform") return SamplerKind::kUniform;
  if (name == "weights") return SamplerKind::kWeights;
  if (name == "in_batch") return SamplerKind::kInBatch;
  if (name == "score") return SamplerKind::kScore;
  throw_invalid("sampler: expected one of 'uniform', 'weights', 'in_batch', 'score', got '", name,
                "'");
}

NegativeSampler::NegativeSampler(index_t n_items, const NegativeSamplerOptions& options,
                                 const double* weights)
    : n_(n_items), options_(options) {
  if (n_items < 1) throw_invalid("n_items: expected an integer >= 1, got ", n_items);
  const index_t min_m = options.kind == SamplerKind::kInBatch ? 0 : 1;
  if (options.num_negatives < min_m) {
    throw_invalid("num_negatives: expected an integer >= ", min_m, ", got ",
                  options.num_negatives);
  }
  if (options.kind == SamplerKind::kScore) {
    if (!(options.temperature > 0) || !std::isfinite(options.temperature)) {
      throw_invalid("temperature: expected a finite value > 0, got ", options.temperature);
    }
    if (!(options.hard_fraction >= 0 && options.hard_fraction <= 1)) {
      throw_invalid("hard_fraction: expected a value in [0, 1], got ", options.hard_fraction);
    }
    if (options.hard_pool < 0) {
      throw_invalid("hard_pool: expected an integer >= 1 or None (exact), got ", options.hard_pool);
    }
    m_hard_ = static_cast<index_t>(std::llround(options.hard_fraction * options.num_negatives));
  }
  if (options.mixed_uniform < 0) {
    throw_invalid("mixed_negatives: expected an integer >= 0, got ", options.mixed_uniform);
  }
  if (options.kind != SamplerKind::kInBatch && (options.mixed_uniform > 0 || options.streaming)) {
    throw_invalid(options.streaming ? "frequency_estimate" : "mixed_negatives",
                  ": only for the in_batch sampler");
  }
  if (options.streaming) {
    if (!(options.streaming_alpha > 0 && options.streaming_alpha <= 1)) {
      throw_invalid("streaming_alpha: expected a value in (0, 1], got ", options.streaming_alpha);
    }
    last_seen_.assign(static_cast<std::size_t>(n_items), 0);
    gap_.assign(static_cast<std::size_t>(n_items), 0.0);
    decay_.assign(static_cast<std::size_t>(n_items), 1.0);
  }
  const bool needs_weights =
      options.kind == SamplerKind::kWeights || options.kind == SamplerKind::kInBatch;
  if (needs_weights && weights == nullptr) {
    throw_invalid("sampler_weights: the '",
                  options.kind == SamplerKind::kWeights ? "weights" : "in_batch",
                  "' sampler needs one weight per item");
  }
  if (weights != nullptr && options.kind != SamplerKind::kUniform) {
    alias_ = std::make_unique<AliasSampler>(weights, n_items);  // validates the weights
    q_ = alias_->probabilities();
    log_q_static_.resize(n_items);
    for (index_t j = 0; j < n_items; ++j) {
      log_q_static_[j] = q_[j] > 0 ? static_cast<float>(std::log(q_[j]))
                                   : -std::numeric_limits<float>::infinity();
    }
  }
}

double NegativeSampler::static_probability(index_t j) const {
  if (options_.kind == SamplerKind::kUniform || q_.empty()) return 1.0 / static_cast<double>(n_);
  return q_[j];
}

double NegativeSampler::mix_log(double log_q_hard) const {
  // An implied SIR probability can exceed 1 for an item far above the pool; clamp it.
  log_q_hard = std::min(log_q_hard, 0.0);
  const double log_n = std::log(static_cast<double>(n_));
  if (m_hard_ == options_.num_negatives) return log_q_hard;
  if (m_hard_ == 0) return -log_n;
  const double f = static_cast<double>(m_hard_) / static_cast<double>(options_.num_negatives);
  const double a = std::log(f) + log_q_hard, b = std::log1p(-f) - log_n;
  const double mx = std::max(a, b);
  return mx + std::log(std::exp(a - mx) + std::exp(b - mx));
}

double NegativeSampler::log_q(const NegativeDraws& draws, index_t b, index_t j,
                              const float* z_col) const {
  switch (options_.kind) {
    case SamplerKind::kUniform:
      return -std::log(static_cast<double>(n_));
    case SamplerKind::kWeights:
      return log_q_static_[j];
    case SamplerKind::kInBatch:
      return in_batch_log_q(draws, j);
    case SamplerKind::kScore: {
      const double inv_t = 1.0 / options_.temperature;
      if (draws.rows == 1) {
        const index_t B = static_cast<index_t>(draws.log_norm.size());
        double mx = kNegInf;
        for (index_t r = 0; r < B; ++r) mx = std::max(mx, z_col[r] * inv_t - draws.log_norm[r]);
        double s = 0.0;
        for (index_t r = 0; r < B; ++r) s += std::exp(z_col[r] * inv_t - draws.log_norm[r] - mx);
        return mix_log(mx + std::log(s / static_cast<double>(B)));
      }
      return mix_log(z_col[b] * inv_t - draws.log_norm[b]);
    }
  }
  return 0.0;
}

void NegativeSampler::sample(const SamplerBatch& batch, std::uint64_t seed, int num_threads,
                             NegativeDraws& out) const {
  const index_t m = options_.num_negatives;
  out.log_norm.clear();
  out.m_hard = 0;
  out.m_uniform = 0;
  switch (options_.kind) {
    case SamplerKind::kUniform:
    case SamplerKind::kWeights: {
      out.rows = options_.share ? 1 : batch.B;
      out.m = m;
      out.ids.resize(out.rows * m);
      out.log_q.resize(out.rows * m);
      const float log_uniform = static_cast<float>(-std::log(static_cast<double>(n_)));
      const bool uniform = options_.kind == SamplerKind::kUniform;
      parallel_for(out.rows, num_threads, [&](std::int64_t r, int) {
        Rng rng(seed, options_.share ? kStreamShared : row_stream(batch, r));
        index_t* ids = out.ids.data() + r * m;
        float* lq = out.log_q.data() + r * m;
        for (index_t i = 0; i < m; ++i) {
          if (uniform) {
            ids[i] = static_cast<index_t>(rng.uniform_int(static_cast<std::uint64_t>(n_)));
            lq[i] = log_uniform;
          } else {
            ids[i] = alias_->draw(rng);
            lq[i] = log_q_static_[ids[i]];
          }
        }
      });
      return;
    }
    case SamplerKind::kInBatch:
      sample_in_batch(batch, seed, out);
      return;
    case SamplerKind::kScore:
      sample_score(batch, seed, num_threads, out);
      return;
  }
}

void NegativeSampler::sample_in_batch(const SamplerBatch& batch, std::uint64_t seed,
                                      NegativeDraws& out) const {
  if (batch.indptr == nullptr) throw_invalid("targets: the in_batch sampler needs the batch");
  const index_t nnz = batch.indptr[batch.B];
  for (index_t k = 0; k < nnz; ++k) {
    const index_t j = batch.indices[k];
    if (j < 0 || j >= n_) throw_out_of_range("targets: item id ", j, " outside [0, ", n_, ")");
  }
  out.ids.assign(batch.indices, batch.indices + nnz);
  std::sort(out.ids.begin(), out.ids.end());
  out.ids.erase(std::unique(out.ids.begin(), out.ids.end()), out.ids.end());
  const auto distinct = static_cast<index_t>(out.ids.size());
  const index_t cap = options_.num_negatives;
  if (cap > 0 && distinct > cap) {  // a uniform subset (partial Fisher-Yates), in id order
    Rng rng(seed, kStreamShared);
    for (index_t i = 0; i < cap; ++i) {
      const auto r = static_cast<index_t>(rng.uniform_int(static_cast<std::uint64_t>(distinct - i)));
      std::swap(out.ids[i], out.ids[i + r]);
    }
    out.ids.resize(cap);
    std::sort(out.ids.begin(), out.ids.end());
  }
  const auto in_set = static_cast<index_t>(out.ids.size());
  const index_t u = options_.mixed_uniform;
  Rng urng(seed, kStreamUniform);
  for (index_t i = 0; i < u; ++i) {
    out.ids.push_back(static_cast<index_t>(urng.uniform_int(static_cast<std::uint64_t>(n_))));
  }
  const index_t m = in_set + u;
  out.rows = 1;
  out.m = m;
  out.batch_entries = nnz;
  out.distinct = distinct;
  out.m_uniform = u;
  out.log_q.resize(m);
  for (index_t i = 0; i < m; ++i) out.log_q[i] = in_batch_log_q(out, out.ids[i]);
}

void NegativeSampler::observe(const index_t* indices, index_t nnz, std::int64_t step) {
  if (!options_.streaming) return;
  observed_.assign(indices, indices + nnz);
  std::sort(observed_.begin(), observed_.end());
  observed_.erase(std::unique(observed_.begin(), observed_.end()), observed_.end());
  const double a = options_.streaming_alpha;
  for (const index_t j : observed_) {
    if (j < 0 || j >= n_) throw_out_of_range("targets: item id ", j, " outside [0, ", n_, ")");
    const auto k = static_cast<std::size_t>(j);
    gap_[k] = (1.0 - a) * gap_[k] + a * static_cast<double>(step - last_seen_[k]);
    decay_[k] *= 1.0 - a;
    last_seen_[k] = step;
  }
}

double NegativeSampler::in_batch_probability(const NegativeDraws& draws, index_t j) const {
  if (options_.streaming) {
    const auto k = static_cast<std::size_t>(j);
    if (decay_[k] == 1.0) return 1.0;  // never seen
    const double g = gap_[k] / (1.0 - decay_[k]);
    return g > 1.0 ? 1.0 / g : 1.0;
  }
  const double tries = static_cast<double>(draws.batch_entries);
  return std::max(-std::expm1(tries * std::log1p(-q_[j])), 1e-300);
}

float NegativeSampler::in_batch_log_q(const NegativeDraws& draws, index_t j) const {
  // The expected count of j among the candidates: P(j among the batch's positives) times
  // P(kept by the cap) = pi_j (in-set / distinct), plus u / n from the uniform draws; the loss
  // corrects by log(m Q) = log(expected count), so log Q = log(count) - log(m).
  const index_t u = draws.m_uniform;
  const auto in_set = static_cast<double>(draws.m - u);
  const auto distinct = static_cast<double>(std::max<index_t>(draws.distinct, 1));
  if (u == 0) {  // log(pi_j in_set / distinct) - log(in_set)
    return static_cast<float>(std::log(in_batch_probability(draws, j)) - std::log(distinct));
  }
  const double count = in_batch_probability(draws, j) * (in_set / distinct) +
                       static_cast<double>(u) / static_cast<double>(n_);
  return static_cast<float>(std::log(std::max(count, 1e-300)) -
                            std::log(static_cast<double>(std::max<index_t>(draws.m, 1))));
}

void NegativeSampler::sample_score(const SamplerBatch& batch, std::uint64_t seed, int num_threads,
                                   NegativeDraws& out) const {
  const index_t B = batch.B, m = options_.num_negatives;
  out.rows = options_.share ? 1 : B;
  out.m = m;
  out.m_hard = m_hard_;
  out.ids.resize(out.rows * m);
  out.log_q.resize(out.rows * m);
  out.log_norm.assign(B, 0.0);
  if (B == 0) return;
  if (options_.hard_pool == 0) {
    sample_score_exact(batch, seed, num_threads, out);
  } else {
    sample_score_pool(batch, seed, num_threads, out);
  }
}

// ---- Exact: all B x n logits, the normalisers, then draws from each row's (or the mixture's)
// cdf; the uniform part of the mix from its own stream.
void NegativeSampler::sample_score_exact(const SamplerBatch& batch, std::uint64_t seed,
                                         int num_threads, NegativeDraws& out) const {
  const index_t B = batch.B, d = batch.dim, m = options_.num_negatives;
  const index_t m_h = m_hard_;
  const bool share = options_.share;
  const double inv_t = 1.0 / options_.temperature;
  const int slots = threads_for(std::max<index_t>(B, 1), num_threads);
  std::vector<Eigen::ArrayXf> exp_scratch(static_cast<std::size_t>(slots));
  out.scores.resize(static_cast<std::size_t>(B) * n_);
  float* Z = out.scores.data();
  ConstMapRowMatrixXf P(batch.psi, B, d);
  parallel_for(n_tasks(n_, kItemsPerTask), num_threads, [&](std::int64_t task, int) {
    const index_t j0 = task * kItemsPerTask;
    const index_t nj = std::min(kItemsPerTask, n_ - j0);
    ConstMapRowMatrixXf V(batch.items + j0 * d, nj, d);
    Eigen::Map<RowMatrixXf, 0, Eigen::OuterStride<>> Zb(Z + j0, B, nj, Eigen::OuterStride<>(n_));
    Zb.noalias() = P * V.transpose();
    if (batch.bias != nullptr) {
      for (index_t i = 0; i < nj; ++i) Zb.col(i).array() += batch.bias[j0 + i];
    }
  });
  parallel_for(B, num_threads, [&](std::int64_t b, int) {
    out.log_norm[b] = log_sum_exp_scaled(Z + b * n_, n_, inv_t, nullptr);
  });
  if (share) {
    // log Qbar(j) = log mean_b Q_b(j), then the cdf of Qbar; both kept in out.cdf (2n doubles).
    out.cdf.resize(2 * static_cast<std::size_t>(n_));
    double* log_qbar = out.cdf.data();
    double* cdf = log_qbar + n_;
    parallel_for(n_tasks(n_, kItemsPerTask), num_threads, [&](std::int64_t task, int) {
      const index_t j0 = task * kItemsPerTask;
      log_mean_exp_columns(Z, B, n_, j0, std::min(n_, j0 + kItemsPerTask), inv_t, out.log_norm,
                           log_qbar);
    });
    double acc = 0.0;
    for (index_t j = 0; j < n_; ++j) cdf[j] = (acc += std::exp(log_qbar[j]));
    Rng rng(seed, kStreamShared);
    for (index_t i = 0; i < m_h; ++i) out.ids[i] = search_cdf(cdf, n_, rng.uniform() * acc);
    Rng urng(seed, kStreamUniform);
    for (index_t i = m_h; i < m; ++i) out.ids[i] = uniform_id(urng, n_);
    for (index_t i = 0; i < m; ++i) {
      out.log_q[i] = static_cast<float>(mix_log(log_qbar[out.ids[i]]));
    }
  } else {
    out.cdf.resize(static_cast<std::size_t>(slots) * n_);
    parallel_for(B, num_threads, [&](std::int64_t b, int slot) {
      double* cdf = out.cdf.data() + static_cast<std::size_t>(slot) * n_;
      const float* zb = Z + b * n_;
      const double ln = out.log_norm[b];
      const double acc = exp_cdf(zb, n_, inv_t, nullptr, ln, exp_scratch[slot], cdf);
      Rng rng(seed, row_stream(batch, b));
      index_t* ids = out.ids.data() + b * m;
      float* lq = out.log_q.data() + b * m;
      for (index_t i = 0; i < m_h; ++i) ids[i] = search_cdf(cdf, n_, rng.uniform() * acc);
      for (index_t i = m_h; i < m; ++i) ids[i] = uniform_id(rng, n_);
      for (index_t i = 0; i < m; ++i) {
        lq[i] = static_cast<float>(mix_log(zb[ids[i]] * inv_t - ln));
      }
    });
  }
}

// ---- SIR: a pool of M candidates from Q0 (+ the shared uniform draws) scored by one B x cols
// GEMM, the normalisers estimated on the pool, then m_h draws resampled from the pool per row
// (or from the mixture over the batch).
void NegativeSampler::sample_score_pool(const SamplerBatch& batch, std::uint64_t seed,
                                        int num_threads, NegativeDraws& out) const {
  const index_t B = batch.B, d = batch.dim, m = options_.num_negatives;
  const index_t m_h = m_hard_, m_u = m - m_hard_;
  const bool share = options_.share;
  const double inv_t = 1.0 / options_.temperature;
  const int slots = threads_for(std::max<index_t>(B, 1), num_threads);
  std::vector<Eigen::ArrayXf> exp_scratch(static_cast<std::size_t>(slots));
  const index_t M = options_.hard_pool;
  const index_t extra = share ? m_u : 0;
  const index_t cols = M + extra;
  out.pool.resize(cols);
  {
    Rng rng(seed, kStreamShared);
    for (index_t i = 0; i < M; ++i) out.pool[i] = alias_ ? alias_->draw(rng) : uniform_id(rng, n_);
    Rng urng(seed, kStreamUniform);
    for (index_t i = M; i < cols; ++i) out.pool[i] = uniform_id(urng, n_);
  }
  out.pool_rows.resize(cols, d);
  parallel_for(n_tasks(cols, 256), num_threads, [&](std::int64_t task, int) {
    const index_t i1 = std::min(cols, (task + 1) * 256);
    for (index_t i = task * 256; i < i1; ++i) {
      std::copy_n(batch.items + out.pool[i] * d, d, out.pool_rows.data() + i * d);
    }
  });
  out.scores.resize(static_cast<std::size_t>(B) * cols);
  float* Z = out.scores.data();
  score_block(batch, out.pool_rows.data(), out.pool.data(), cols, Z, cols, num_threads);
  // log Q0 of the pool candidates, then Zhat_b = (1/M) sum_i exp(z_bi / T) / Q0(c_i).
  std::vector<float> log_q0(M);
  const float log_uniform = static_cast<float>(-std::log(static_cast<double>(n_)));
  for (index_t i = 0; i < M; ++i) log_q0[i] = alias_ ? log_q_static_[out.pool[i]] : log_uniform;
  const double log_m = std::log(static_cast<double>(M));
  parallel_for(B, num_threads, [&](std::int64_t b, int) {
    out.log_norm[b] = log_sum_exp_scaled(Z + b * cols, M, inv_t, log_q0.data()) - log_m;
  });
  if (share) {
    // log Qbar(c_i) = log mean_b exp(z_bi / T - log Zhat_b) for every scored column; resample the
    // pool with weights Qbar / Q0 (shifted by their maximum).
    out.cdf.resize(2 * static_cast<std::size_t>(cols));
    double* log_qbar = out.cdf.data();
    double* cdf = log_qbar + cols;
    parallel_for(n_tasks(cols, 256), num_threads, [&](std::int64_t task, int) {
      const index_t i0 = task * 256;
      log_mean_exp_columns(Z, B, cols, i0, std::min(cols, i0 + 256), inv_t, out.log_norm,
                           log_qbar);
    });
    double mx = kNegInf;
    for (index_t i = 0; i < M; ++i) mx = std::max(mx, log_qbar[i] - log_q0[i]);
    double acc = 0.0;
    for (index_t i = 0; i < M; ++i) cdf[i] = (acc += std::exp(log_qbar[i] - log_q0[i] - mx));
    Rng rng(seed, kStreamResample);
    for (index_t k = 0; k < m_h; ++k) {
      const index_t i = search_cdf(cdf, M, rng.uniform() * acc);
      out.ids[k] = out.pool[i];
      out.log_q[k] = static_cast<float>(mix_log(log_qbar[i]));
    }
    for (index_t k = m_h; k < m; ++k) {
      const index_t i = M + (k - m_h);
      out.ids[k] = out.pool[i];
      out.log_q[k] = static_cast<float>(mix_log(log_qbar[i]));
    }
    return;
  }
  out.cdf.resize(static_cast<std::size_t>(slots) * M);
  parallel_for(B, num_threads, [&](std::int64_t b, int slot) {
    double* cdf = out.cdf.data() + static_cast<std::size_t>(slot) * M;
    const float* zb = Z + b * cols;
    const double ln = out.log_norm[b];
    // Resampling weights exp(z / T) / Q0, shifted by their maximum.
    // Shifted by log M Zhat_b: the weights exp(z / T) / Q0 then sum to 1 (up to rounding).
    const double acc = exp_cdf(zb, M, inv_t, log_q0.data(), ln + log_m, exp_scratch[slot], cdf);
    Rng rng(seed, row_stream(batch, b));
    index_t* ids = out.ids.data() + b * m;
    float* lq = out.log_q.data() + b * m;
    for (index_t k = 0; k < m_h; ++k) {
      const index_t i = search_cdf(cdf, M, rng.uniform() * acc);
      ids[k] = out.pool[i];
      lq[k] = static_cast<float>(mix_log(zb[i] * inv_t - ln));
    }
    const float* psi_b = batch.psi + b * d;
    for (index_t k = m_h; k < m; ++k) {
      const index_t j = uniform_id(rng, n_);
      const float* v = batch.items + j * d;
      float z = 0.0f;
      for (index_t c = 0; c < d; ++c) z += psi_b[c] * v[c];
      if (batch.bias != nullptr) z += batch.bias[j];
      ids[k] = j;
      lq[k] = static_cast<float>(mix_log(z * inv_t - ln));
    }
  });
}

}  // namespace fastsoftmax
