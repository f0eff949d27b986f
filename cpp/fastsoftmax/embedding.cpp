#include "fastsoftmax/embedding.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

// Elements per parallel task of an element-wise update (fixed, not thread dependent; element
// updates are independent anyway).
constexpr index_t kUpdateChunk = 1 << 15;
// Rows per parallel task of a lookup.
constexpr index_t kLookupRows = 64;

struct StepConstants {
  float lr, l2, b1, b2, eps, step_size, bc2_sqrt;
};

StepConstants step_constants(const OptimizerConfig& c, std::int64_t step) {
  StepConstants k{c.learning_rate, c.l2, c.beta1, c.beta2, 0.0f, c.learning_rate, 1.0f};
  if (c.kind == OptimizerKind::kAdagrad) k.eps = c.adagrad_eps;
  if (c.kind == OptimizerKind::kAdam) {
    k.eps = c.adam_eps;
    const double bc1 = 1.0 - std::pow(static_cast<double>(c.beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(c.beta2), static_cast<double>(step));
    k.step_size = static_cast<float>(c.learning_rate / bc1);
    k.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  }
  return k;
}

// The element-wise update of `count` contiguous values.
inline void update_span(OptimizerKind kind, const StepConstants& k, float* p, const float* g,
                        float* s1, float* s2, index_t count) {
  switch (kind) {
    case OptimizerKind::kSgd:
      for (index_t i = 0; i < count; ++i) p[i] -= k.lr * (g[i] + k.l2 * p[i]);
      break;
    case OptimizerKind::kAdagrad:
      for (index_t i = 0; i < count; ++i) {
        const float gi = g[i] + k.l2 * p[i];
        s1[i] += gi * gi;
        p[i] -= k.lr * gi / (std::sqrt(s1[i]) + k.eps);
      }
      break;
    case OptimizerKind::kAdam:
      for (index_t i = 0; i < count; ++i) {
        const float gi = g[i] + k.l2 * p[i];
        s1[i] = k.b1 * s1[i] + (1.0f - k.b1) * gi;
        s2[i] = k.b2 * s2[i] + (1.0f - k.b2) * gi * gi;
        p[i] -= k.step_size * s1[i] / (std::sqrt(s2[i]) / k.bc2_sqrt + k.eps);
      }
      break;
  }
}

}  // namespace

OptimizerKind parse_optimizer(const std::string& name) {
  if (name == "sgd") return OptimizerKind::kSgd;
  if (name == "adagrad") return OptimizerKind::kAdagrad;
  if (name == "adam") return OptimizerKind::kAdam;
  throw_invalid("optimizer: expected one of 'sgd', 'adagrad', 'adam', got '", name, "'");
}

Pooling parse_pooling(const std::string& name) {
  if (name == "mean") return Pooling::kMean;
  if (name == "sum") return Pooling::kSum;
  if (name == "sqrtn") return Pooling::kSqrtN;
  throw_invalid("pooling: expected one of 'mean', 'sum', 'sqrtn', got '", name, "'");
}

void Parameter::reset_state(const OptimizerConfig& config) {
  step = 0;
  state1.resize(0, 0);
  state2.resize(0, 0);
  if (config.kind != OptimizerKind::kSgd) state1 = RowMatrixXf::Zero(rows(), cols());
  if (config.kind == OptimizerKind::kAdam) state2 = RowMatrixXf::Zero(rows(), cols());
}

void Parameter::apply_dense(const float* grad, const OptimizerConfig& config, int num_threads) {
  if (config.kind != OptimizerKind::kSgd && state1.size() != value.size()) reset_state(config);
  ++step;
  const StepConstants k = step_constants(config, step);
  const index_t total = value.size();
  const index_t n_tasks = (total + kUpdateChunk - 1) / kUpdateChunk;
  float* p = value.data();
  float* s1 = state1.data();
  float* s2 = state2.data();
  parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
    const index_t begin = t * kUpdateChunk;
    const index_t count = std::min(kUpdateChunk, total - begin);
    update_span(config.kind, k, p + begin, grad + begin, s1 ? s1 + begin : nullptr,
                s2 ? s2 + begin : nullptr, count);
  });
}

void Parameter::apply_rows(const index_t* rows, index_t k_rows, const float* grad,
                           const OptimizerConfig& config, int num_threads) {
  if (config.kind != OptimizerKind::kSgd && state1.size() != value.size()) reset_state(config);
  ++step;
  const StepConstants k = step_constants(config, step);
  const index_t c = cols();
  const index_t rows_per_task = std::max<index_t>(1, kUpdateChunk / std::max<index_t>(c, 1));
  const index_t n_tasks = (k_rows + rows_per_task - 1) / rows_per_task;
  float* p = value.data();
  float* s1 = state1.data();
  float* s2 = state2.data();
  parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
    const index_t end = std::min(k_rows, (t + 1) * rows_per_task);
    for (index_t i = t * rows_per_task; i < end; ++i) {
      const index_t off = rows[i] * c;
      update_span(config.kind, k, p + off, grad + i * c, s1 ? s1 + off : nullptr,
                  s2 ? s2 + off : nullptr, c);
    }
  });
}

void embed_categorical(const RowMatrixXf& table, const index_t* ids, const index_t* rows, index_t B,
                       float* out, index_t out_stride, int num_threads) {
  const index_t e = table.cols();
  const index_t n_tasks = (B + kLookupRows - 1) / kLookupRows;
  parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
    const index_t end = std::min(B, (t + 1) * kLookupRows);
    for (index_t b = t * kLookupRows; b < end; ++b) {
      const float* src = table.data() + ids[rows[b]] * e;
      std::copy(src, src + e, out + b * out_stride);
    }
  });
}

namespace {

// Pooling coefficient normaliser of one bag: c_k = w_k * scale.
inline float bag_scale(const BagsView& bags, index_t row, Pooling pooling) {
  if (pooling == Pooling::kSum) return 1.0f;
  double acc = 0.0;
  for (index_t k = bags.indptr[row]; k < bags.indptr[row + 1]; ++k) {
    const double w = bags.weights ? bags.weights[k] : 1.0;
    acc += pooling == Pooling::kMean ? w : w * w;
  }
  if (pooling == Pooling::kSqrtN) acc = std::sqrt(acc);
  return acc > 0.0 ? static_cast<float>(1.0 / acc) : 0.0f;
}

}  // namespace

void embed_bags(const RowMatrixXf& table, const BagsView& bags, const index_t* rows, index_t B,
                Pooling pooling, float* out, index_t out_stride, int num_threads) {
  const index_t e = table.cols();
  const index_t n_tasks = (B + kLookupRows - 1) / kLookupRows;
  parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
    const index_t end = std::min(B, (t + 1) * kLookupRows);
    for (index_t b = t * kLookupRows; b < end; ++b) {
      const index_t r = rows[b];
      Eigen::Map<Eigen::VectorXf> dst(out + b * out_stride, e);
      dst.setZero();
      const float scale = bag_scale(bags, r, pooling);
      for (index_t k = bags.indptr[r]; k < bags.indptr[r + 1]; ++k) {
        const float c = (bags.weights ? bags.weights[k] : 1.0f) * scale;
        dst += c * Eigen::Map<const Eigen::VectorXf>(table.data() + bags.indices[k] * e, e);
      }
    }
  });
}

void RowGradient::reset(index_t vocab, index_t cols) {
  if (static_cast<index_t>(slot_.size()) != vocab) {
    slot_.assign(static_cast<std::size_t>(vocab), -1);
  } else {
    for (const index_t r : rows_) slot_[r] = -1;
  }
  rows_.clear();
  cols_ = cols;
}

void RowGradient::add(index_t id, float coef, const float* g) {
  std::int64_t s = slot_[id];
  if (s < 0) {
    s = static_cast<std::int64_t>(rows_.size());
    slot_[id] = s;
    rows_.push_back(id);
    if (grad_.size() < rows_.size() * cols_) grad_.resize(std::max(grad_.size() * 2, rows_.size() * cols_));
    std::fill_n(grad_.data() + s * cols_, cols_, 0.0f);
  }
  float* dst = grad_.data() + s * cols_;
  for (index_t c = 0; c < cols_; ++c) dst[c] += coef * g[c];
}

void RowGradient::finish() {
  const index_t k = size();
  if (std::is_sorted(rows_.begin(), rows_.end())) return;
  perm_.resize(k);
  std::iota(perm_.begin(), perm_.end(), index_t{0});
  std::sort(perm_.begin(), perm_.end(), [&](index_t a, index_t b) { return rows_[a] < rows_[b]; });
  sorted_.resize(static_cast<std::size_t>(k * cols_));
  for (index_t i = 0; i < k; ++i) {
    std::copy_n(grad_.data() + perm_[i] * cols_, cols_, sorted_.data() + i * cols_);
  }
  std::copy_n(sorted_.data(), k * cols_, grad_.data());
  for (index_t i = 0; i < k; ++i) perm_[i] = rows_[perm_[i]];  // perm_ now holds sorted ids
  rows_.swap(perm_);
  for (index_t i = 0; i < k; ++i) slot_[rows_[i]] = i;
}

void embed_categorical_backward(const index_t* ids, const index_t* rows, index_t B,
                                const float* dout, index_t dout_stride, RowGradient* grad) {
  for (index_t b = 0; b < B; ++b) grad->add(ids[rows[b]], 1.0f, dout + b * dout_stride);
}

void embed_bags_backward(const BagsView& bags, const index_t* rows, index_t B, Pooling pooling,
                         const float* dout, index_t dout_stride, RowGradient* grad) {
  for (index_t b = 0; b < B; ++b) {
    const index_t r = rows[b];
    const float scale = bag_scale(bags, r, pooling);
    if (scale == 0.0f) continue;
    for (index_t k = bags.indptr[r]; k < bags.indptr[r + 1]; ++k) {
      const float c = (bags.weights ? bags.weights[k] : 1.0f) * scale;
      grad->add(bags.indices[k], c, dout + b * dout_stride);
    }
  }
}

}  // namespace fastsoftmax
