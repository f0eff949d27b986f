#include "fastsoftmax/qr_table.h"

#include <algorithm>
#include <cmath>

#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

constexpr index_t kRowsPerTask = 256;

}  // namespace

QrItemTable::QrItemTable(index_t n_items, index_t dim, index_t buckets,
                         std::vector<index_t> dedicated)
    : n_items_(n_items), dim_(dim), buckets_(buckets) {
  if (buckets < 1 || buckets > n_items) {
    throw_invalid("item_buckets: expected an integer in [1, n_items = ", n_items, "], got ",
                  buckets);
  }
  if (static_cast<index_t>(dedicated.size()) > n_items) {
    throw_invalid("item_dedicated: expected at most n_items = ", n_items, " items, got ",
                  dedicated.size());
  }
  if (n_items >= (index_t{1} << 31) && !dedicated.empty()) {
    throw_invalid("item_dedicated: a hybrid table needs fewer than 2^31 items, got ", n_items);
  }
  for (std::size_t i = 0; i < dedicated.size(); ++i) {
    const index_t j = dedicated[i];
    if (j < 0 || j >= n_items || (i > 0 && j <= dedicated[i - 1])) {
      throw_invalid("item_dedicated: expected sorted unique item ids in [0, ", n_items, ")");
    }
  }
  quotient_ = Parameter((n_items + buckets - 1) / buckets, dim);
  remainder_ = Parameter(buckets, dim);
  if (!dedicated.empty()) {
    dedicated_ = Parameter(static_cast<index_t>(dedicated.size()), dim);
    slot_.assign(static_cast<std::size_t>(n_items), -1);
    for (std::size_t i = 0; i < dedicated.size(); ++i) {
      slot_[static_cast<std::size_t>(dedicated[i])] = static_cast<std::int32_t>(i);
    }
  }
}

void QrItemTable::initialize(std::uint64_t seed, std::uint64_t& stream) {
  const double d = static_cast<double>(dim_);
  const auto a_qr = static_cast<float>(std::sqrt(3.0) * std::pow(d, -0.25));
  fill_uniform(quotient_.value, a_qr, seed, stream++);
  fill_uniform(remainder_.value, a_qr, seed, stream++);
  if (!slot_.empty()) {
    fill_uniform(dedicated_.value, static_cast<float>(std::sqrt(3.0 / d)), seed, stream++);
  }
}

void QrItemTable::materialize(const index_t* rows, index_t C, float* out, int num_threads) const {
  const index_t d = dim_, b = buckets_;
  parallel_for(n_tasks(C, kRowsPerTask), num_threads, [&](std::int64_t task, int) {
    const index_t c1 = std::min(C, (task + 1) * kRowsPerTask);
    for (index_t c = task * kRowsPerTask; c < c1; ++c) {
      const index_t j = rows[c];
      float* v = out + c * d;
      const std::int32_t s = slot_.empty() ? -1 : slot_[static_cast<std::size_t>(j)];
      if (s >= 0) {
        std::copy_n(dedicated_.value.data() + s * d, d, v);
        continue;
      }
      const float* q = quotient_.value.data() + (j / b) * d;
      const float* r = remainder_.value.data() + (j % b) * d;
      for (index_t e = 0; e < d; ++e) v[e] = q[e] * r[e];
    }
  });
}

void QrItemTable::backward(const index_t* ids, index_t k, const float* grad, int num_threads) {
  const index_t d = dim_, b = buckets_;
  if (grad_q_.rows() < k || grad_q_.cols() != d) {
    grad_q_.resize(std::max<index_t>(k, 1), d);
    grad_r_.resize(std::max<index_t>(k, 1), d);
  }
  // The products, in parallel (each row on its own).
  parallel_for(n_tasks(k, kRowsPerTask), num_threads, [&](std::int64_t task, int) {
    const index_t i1 = std::min(k, (task + 1) * kRowsPerTask);
    for (index_t i = task * kRowsPerTask; i < i1; ++i) {
      const index_t j = ids[i];
      if (!slot_.empty() && slot_[static_cast<std::size_t>(j)] >= 0) continue;
      const float* g = grad + i * d;
      const float* q = quotient_.value.data() + (j / b) * d;
      const float* r = remainder_.value.data() + (j % b) * d;
      float* gq = grad_q_.data() + i * d;
      float* gr = grad_r_.data() + i * d;
      for (index_t e = 0; e < d; ++e) {
        gq[e] = g[e] * r[e];
        gr[e] = g[e] * q[e];
      }
    }
  });
  // The row gradients record the contributions in row order (summed when stepped).
  dq_.reset(quotient_.rows(), d);
  dr_.reset(remainder_.rows(), d);
  if (!slot_.empty()) dd_.reset(dedicated_.rows(), d);
  for (index_t i = 0; i < k; ++i) {
    const index_t j = ids[i];
    const std::int32_t s = slot_.empty() ? -1 : slot_[static_cast<std::size_t>(j)];
    if (s >= 0) {
      dd_.add(s, 1.0f, grad + i * d);
    } else {
      dq_.add(j / b, 1.0f, grad_q_.data() + i * d);
      dr_.add(j % b, 1.0f, grad_r_.data() + i * d);
    }
  }
}

void QrItemTable::add_steps(const OptimizerConfig& opt, std::vector<UpdateJob>& jobs) {
  // Each step reads only its own gradient rows (the products were taken in backward()).
  jobs.push_back(quotient_.row_gradient_step(dq_, opt));
  jobs.push_back(remainder_.row_gradient_step(dr_, opt));
  if (!slot_.empty()) jobs.push_back(dedicated_.row_gradient_step(dd_, opt));
}

void QrItemTable::add_gradients(std::vector<RowMatrixXf>& out, std::size_t first,
                                int num_threads) {
  RowGradient* grads[] = {&dq_, &dr_, &dd_};
  const std::size_t n_params = slot_.empty() ? 2 : 3;
  for (std::size_t p = 0; p < n_params; ++p) {
    RowGradient& g = *grads[p];
    g.materialize(num_threads);
    RowMatrixXf& o = out[first + p];
    for (index_t i = 0; i < g.size(); ++i) {
      o.row(g.rows()[static_cast<std::size_t>(i)]) +=
          ConstMapRowMatrixXf(g.grad() + i * dim_, 1, dim_);
    }
  }
}

void QrItemTable::parameters(std::vector<std::pair<std::string, Parameter*>>& out) {
  out.emplace_back("item_qr.quotient", &quotient_);
  out.emplace_back("item_qr.remainder", &remainder_);
  if (!slot_.empty()) out.emplace_back("item_qr.dedicated", &dedicated_);
}

}  // namespace fastsoftmax
