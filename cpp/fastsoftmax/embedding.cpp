#include "fastsoftmax/embedding.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstdint>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastsoftmax/random.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

// Elements per parallel task of an element-wise update (fixed, not thread dependent; element
// updates are independent anyway).
constexpr index_t kUpdateChunk = 1 << 13;
// Rows per parallel task of a lookup.
constexpr index_t kLookupRows = 64;
// Table rows prefetched ahead of use in random row reads and updates.
constexpr index_t kPrefetchRows = 8;

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

// The element-wise update of `count` contiguous values with gradient element i = g(i).
template <class Grad>
inline void update_span(OptimizerKind kind, const StepConstants& k, float* p, const Grad& g,
                        float* s1, float* s2, index_t count) {
  switch (kind) {
    case OptimizerKind::kSgd:
      for (index_t i = 0; i < count; ++i) p[i] -= k.lr * (g(i) + k.l2 * p[i]);
      break;
    case OptimizerKind::kAdagrad:
      for (index_t i = 0; i < count; ++i) {
        const float gi = g(i) + k.l2 * p[i];
        s1[i] += gi * gi;
        p[i] -= k.lr * gi / (std::sqrt(s1[i]) + k.eps);
      }
      break;
    case OptimizerKind::kAdam:
      for (index_t i = 0; i < count; ++i) {
        const float gi = g(i) + k.l2 * p[i];
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

void fill_uniform(RowMatrixXf& m, float a, std::uint64_t seed, std::uint64_t stream) {
  Rng rng(seed, stream);
  float* p = m.data();
  for (index_t i = 0; i < m.size(); ++i) p[i] = a * (2.0f * rng.uniform_float() - 1.0f);
}

void advise_huge_pages(void* data, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t stop = start + bytes;
  const std::uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const std::uintptr_t end = stop & ~(kHugePage - 1);
  // Only a hint (before the first touch, so the pages are faulted in huge); failure is harmless.
  if (end >= begin + 2 * kHugePage) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
}

// Rows of 16 floats or a multiple of 16 then never straddle a cache line (see CMakeLists.txt).
static_assert(EIGEN_DEFAULT_ALIGN_BYTES >= 64,
              "build with EIGEN_MAX_ALIGN_BYTES=64: tables must start on a cache line");

void allocate_zeroed(RowMatrixXf& m, index_t rows, index_t cols) {
  m.resize(rows, cols);
  advise_huge_pages(m.data(), static_cast<std::size_t>(m.size()) * sizeof(float));
  m.setZero();
}

void Parameter::reset_state(const OptimizerConfig& config) {
  step = 0;
  state1.resize(0, 0);
  state2.resize(0, 0);
  if (config.kind != OptimizerKind::kSgd) allocate_zeroed(state1, rows(), cols());
  if (config.kind == OptimizerKind::kAdam) allocate_zeroed(state2, rows(), cols());
}

void run_update_jobs(const std::vector<UpdateJob>& jobs, int num_threads) {
  std::int64_t total = 0;
  index_t scratch = 0;
  for (const UpdateJob& j : jobs) {
    total += j.n_tasks;
    scratch = std::max(scratch, j.scratch_floats);
  }
  parallel_for(total, num_threads, [&](std::int64_t task, int) {
    // Per-thread scratch, kept across calls (no allocation in steady state).
    thread_local std::vector<float> buf;
    if (static_cast<index_t>(buf.size()) < scratch) buf.resize(static_cast<std::size_t>(scratch));
    std::size_t j = 0;
    while (task >= jobs[j].n_tasks) task -= jobs[j++].n_tasks;
    jobs[j].run(task, buf.data());
  });
}

namespace {

// What one step updates: the parameter's arrays and the step's constants.
struct StepTarget {
  OptimizerKind kind;
  StepConstants k;
  float* p;
  float* s1;  // nullptr when the optimiser has no such state
  float* s2;
  // The element-wise update of elements [off, off + count) with gradient g[0..count).
  void update(index_t off, const float* g, index_t count) const {
    update_span(kind, k, p + off, [g](index_t i) { return g[i]; }, s1 ? s1 + off : nullptr,
                s2 ? s2 + off : nullptr, count);
  }
  // The same with gradient 0 + coef * g[0..count) (a row's single contribution, summed as
  // RowGradient::sum_row would: the same values, without the intermediate row).
  void update_scaled(index_t off, float coef, const float* g, index_t count) const {
    update_span(kind, k, p + off, [coef, g](index_t i) { return 0.0f + coef * g[i]; },
                s1 ? s1 + off : nullptr, s2 ? s2 + off : nullptr, count);
  }
  // Prefetches `count` elements from off (value and first state) for writing.
  void prefetch(index_t off, index_t count) const {
    for (index_t x = 0; x < count; x += 16) {
      __builtin_prefetch(p + off + x, 1);
      if (s1) __builtin_prefetch(s1 + off + x, 1);
    }
  }
};

// The optimiser bookkeeping of one step (state allocated for `config` if needed, step counted)
// and its target.
StepTarget begin_step(Parameter& param, const OptimizerConfig& config) {
  if (config.kind != OptimizerKind::kSgd && param.state1.size() != param.value.size()) {
    param.reset_state(config);
  }
  ++param.step;
  return StepTarget{config.kind, step_constants(config, param.step), param.value.data(),
                    param.state1.size() > 0 ? param.state1.data() : nullptr,
                    param.state2.size() > 0 ? param.state2.data() : nullptr};
}

}  // namespace

UpdateJob Parameter::dense_step(const float* grad, const OptimizerConfig& config,
                                std::function<void(index_t r0, index_t r1)> after,
                                index_t row_multiple) {
  const StepTarget target = begin_step(*this, config);
  const index_t total = value.size();
  UpdateJob job;
  if (!after) {
    job.n_tasks = (total + kUpdateChunk - 1) / kUpdateChunk;
    job.run = [=](std::int64_t t, float*) {
      const index_t begin = t * kUpdateChunk;
      target.update(begin, grad + begin, std::min(kUpdateChunk, total - begin));
    };
    return job;
  }
  const index_t n_rows = rows(), c = cols();
  const index_t multiple = std::max<index_t>(1, row_multiple);
  const index_t rows_per_task =
      std::max<index_t>(multiple, kUpdateChunk / std::max<index_t>(c, 1) / multiple * multiple);
  job.n_tasks = (n_rows + rows_per_task - 1) / rows_per_task;
  job.run = [=, after = std::move(after)](std::int64_t t, float*) {
    const index_t r0 = t * rows_per_task, r1 = std::min(n_rows, r0 + rows_per_task);
    target.update(r0 * c, grad + r0 * c, (r1 - r0) * c);
    after(r0, r1);
  };
  return job;
}

UpdateJob Parameter::rows_step(const index_t* rows, index_t k_rows, const float* grad,
                               const OptimizerConfig& config) {
  const StepTarget target = begin_step(*this, config);
  const index_t c = cols();
  const index_t rows_per_task = std::max<index_t>(1, kUpdateChunk / std::max<index_t>(c, 1));
  UpdateJob job;
  job.n_tasks = (k_rows + rows_per_task - 1) / rows_per_task;
  job.run = [=](std::int64_t t, float*) {
    const index_t end = std::min(k_rows, (t + 1) * rows_per_task);
    for (index_t i = t * rows_per_task; i < end; ++i) {
      // Random rows of a large table: fetch them ahead.
      if (i + kPrefetchRows < end) target.prefetch(rows[i + kPrefetchRows] * c, c);
      target.update(rows[i] * c, grad + i * c, c);
    }
  };
  return job;
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
  if (bags.weights == nullptr) {
    acc = static_cast<double>(bags.indptr[row + 1] - bags.indptr[row]);  // the sum of 1s, exactly
  } else {
    for (index_t k = bags.indptr[row]; k < bags.indptr[row + 1]; ++k) {
      const double w = bags.weights[k];
      acc += pooling == Pooling::kMean ? w : w * w;
    }
  }
  if (pooling == Pooling::kSqrtN) acc = std::sqrt(acc);
  return acc > 0.0 ? static_cast<float>(1.0 / acc) : 0.0f;
}

// The CSR data of a batch's bags are random rows of the user's arrays: bag rows[b + kBagsAhead]'s
// ids (and weights) are prefetched while bag b is processed, and its indptr entry twice as far
// ahead. (Without it every bag began with two dependent cache misses, indptr then indices: a
// third of the lookup's stalls.)
constexpr index_t kBagsAhead = 4;

inline void prefetch_bag(const BagsView& bags, const index_t* rows, index_t b, index_t end) {
  if (b + 2 * kBagsAhead < end) __builtin_prefetch(bags.indptr + rows[b + 2 * kBagsAhead]);
  if (b + kBagsAhead < end) {
    const index_t r = rows[b + kBagsAhead];
    const index_t k0 = bags.indptr[r], k1 = bags.indptr[r + 1];
    for (index_t k = k0; k < k1; k += 8) __builtin_prefetch(bags.indices + k);
    if (bags.weights != nullptr) {
      for (index_t k = k0; k < k1; k += 16) __builtin_prefetch(bags.weights + k);
    }
  }
}

// Primes prefetch_bag for bags [begin, end): their first indptr entries and bags' entries.
inline void prefetch_first_bags(const BagsView& bags, const index_t* rows, index_t begin,
                                index_t end) {
  for (index_t b = begin; b < std::min(end, begin + 2 * kBagsAhead); ++b) {
    __builtin_prefetch(bags.indptr + rows[b]);
  }
  for (index_t b = begin - kBagsAhead; b < begin; ++b) prefetch_bag(bags, rows, b, end);
}

// dst[0..E) = sum over entries k in [k0, k1) of coef(k) * table row indices[k] (E floats wide),
// accumulated in order from 0; prefetch() is called once before each entry.
template <int E, typename Coef, typename Prefetch>
void pool_in_registers(const float* table, const index_t* indices, index_t k0, index_t k1,
                       const Coef& coef, Prefetch& prefetch, float* dst) {
  float acc[E] = {};
  for (index_t k = k0; k < k1; ++k) {
    prefetch();
    const float c = coef(k);
    const float* src = table + indices[k] * E;
#pragma GCC unroll 64
    for (int j = 0; j < E; ++j) acc[j] += c * src[j];
  }
  std::copy(acc, acc + E, dst);
}

}  // namespace

void embed_bags(const RowMatrixXf& table, const BagsView& bags, const index_t* rows, index_t B,
                Pooling pooling, float* out, index_t out_stride, int num_threads) {
  const index_t e = table.cols();
  const float* data = table.data();
  const index_t n_tasks = (B + kLookupRows - 1) / kLookupRows;
  parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
    const index_t begin = t * kLookupRows;
    const index_t end = std::min(B, begin + kLookupRows);
    prefetch_first_bags(bags, rows, begin, end);
    // The table rows are random reads of a large table: a cursor walks the chunk's entries
    // kPrefetchRows ahead of the pooling loop and prefetches their rows.
    index_t pb = begin, pk = begin < end ? bags.indptr[rows[begin]] : 0;
    auto prefetch_next = [&]() {
      while (pb < end && pk >= bags.indptr[rows[pb] + 1]) {
        if (++pb < end) pk = bags.indptr[rows[pb]];
      }
      if (pb < end) {
        const float* src = data + bags.indices[pk++] * e;
        for (index_t x = 0; x < e; x += 16) __builtin_prefetch(src + x);
      }
    };
    for (index_t i = 0; i < kPrefetchRows; ++i) prefetch_next();
    for (index_t b = begin; b < end; ++b) {
      prefetch_bag(bags, rows, b, end);
      const index_t r = rows[b];
      const float scale = bag_scale(bags, r, pooling);
      const index_t k0 = bags.indptr[r], k1 = bags.indptr[r + 1];
      auto coef = [&](index_t k) { return (bags.weights ? bags.weights[k] : 1.0f) * scale; };
      float* dst = out + b * out_stride;
      // The common widths keep the sum in registers (the generic loop below stores and
      // reloads dst after every entry: 2.5-5% of the sampled step at width 64). Same
      // operations in the same order, so the same results.
      switch (e) {
        case 64:
          pool_in_registers<64>(data, bags.indices, k0, k1, coef, prefetch_next, dst);
          continue;
        case 32:
          pool_in_registers<32>(data, bags.indices, k0, k1, coef, prefetch_next, dst);
          continue;
        case 16:
          pool_in_registers<16>(data, bags.indices, k0, k1, coef, prefetch_next, dst);
          continue;
        default: break;
      }
      Eigen::Map<Eigen::VectorXf> sum(dst, e);
      sum.setZero();
      for (index_t k = k0; k < k1; ++k) {
        prefetch_next();
        sum += coef(k) * Eigen::Map<const Eigen::VectorXf>(data + bags.indices[k] * e, e);
      }
    }
  });
}

void RowGradient::reset(index_t vocab, index_t cols) {
  if (slot_ != own_slots_.data() || static_cast<index_t>(own_slots_.size()) != vocab) {
    own_slots_.assign(static_cast<std::size_t>(vocab), -1);
    slot_ = own_slots_.data();
    slots_clear_ = true;
  } else {
    clear_slots();
  }
  rows_.clear();
  contrib_.clear();
  first_.clear();
  last_.clear();
  cols_ = cols;
}

void RowGradient::reset_sequential(index_t cols) {
  clear_slots();
  slot_ = nullptr;  // (reset() makes its own slot array again)
  rows_.clear();
  contrib_.clear();
  first_.clear();
  last_.clear();
  cols_ = cols;
}

void RowGradient::reset_shared(std::int32_t* slots, index_t cols) {
  slot_ = slots;
  slots_clear_ = true;
  rows_.clear();
  contrib_.clear();
  first_.clear();
  last_.clear();
  cols_ = cols;
}

void RowGradient::clear_slots() {
  if (slot_ == nullptr || slots_clear_) return;
  for (const index_t r : rows_) slot_[r] = -1;
  slots_clear_ = true;
}

void RowGradient::sum_row(index_t i, float* out) const {
  std::int32_t k = first_[static_cast<std::size_t>(i)];
  const index_t cols = cols_;
  if (k < 0) {
    std::fill_n(out, cols, 0.0f);
    return;
  }
  // The first contribution sets the row (its product equals 0 + product: no separate zeroing).
  {
    const Contribution& c = contrib_[static_cast<std::size_t>(k)];
    const float coef = c.coef;
    const float* g = c.g;
    for (index_t j = 0; j < cols; ++j) out[j] = 0.0f + coef * g[j];
    k = c.next;
  }
  while (k >= 0) {
    const Contribution& c = contrib_[static_cast<std::size_t>(k)];
    const float coef = c.coef;
    const float* g = c.g;
    for (index_t j = 0; j < cols; ++j) out[j] += coef * g[j];
    k = c.next;
  }
}

void RowGradient::materialize(int num_threads) {
  grad_.resize(static_cast<std::size_t>(size() * cols_));
  sum_rows(grad_.data(), num_threads);
}

void RowGradient::sum_rows(float* out, int num_threads) {
  const index_t k = size();
  const index_t n_tasks = (k + kRowsPerTask - 1) / kRowsPerTask;
  parallel_for(n_tasks, num_threads, [&](std::int64_t t, int) {
    const index_t end = std::min(k, (t + 1) * kRowsPerTask);
    for (index_t i = t * kRowsPerTask; i < end; ++i) sum_row(i, out + i * cols_);
  });
}

namespace {

// Applies rows [begin, end) of `grad` to the table rows they belong to, prefetching the rows
// kPrefetchRows ahead: a row with a single contribution directly (most rows of a bag table's
// batch), any other summed into `g` (cols floats) first.
void update_grouped_rows(const StepTarget& target, index_t c, const RowGradient& grad,
                         index_t begin, index_t end, float* g) {
  const index_t* rows = grad.rows().data();
  for (index_t i = begin; i < end; ++i) {
    if (i + kPrefetchRows < end) target.prefetch(rows[i + kPrefetchRows] * c, c);
    float coef;
    const float* src;
    if (grad.single(i, &coef, &src)) {
      target.update_scaled(rows[i] * c, coef, src, c);
    } else {
      grad.sum_row(i, g);
      target.update(rows[i] * c, g, c);
    }
  }
}

}  // namespace

UpdateJob Parameter::bag_gradient_step(BagGradient& grad, const OptimizerConfig& config) {
  const StepTarget target = begin_step(*this, config);
  const index_t c = cols();
  BagGradient* g = &grad;
  UpdateJob job;
  job.n_tasks = BagGradient::kParts;
  job.scratch_floats = c;
  job.run = [=](std::int64_t t, float* scratch) {
    g->collect(static_cast<int>(t));
    const RowGradient& part = g->part(static_cast<int>(t));
    update_grouped_rows(target, c, part, 0, part.size(), scratch);
  };
  return job;
}

namespace {

// Calls fn(k, k1, id, c_k, g) for every entry k (k < k1, the bag's end) of bag rows[b], b in
// [b0, b1), in order: grad[id] += c_k * g with g = dout[b]. Bags with a zero scale add nothing.
template <class Fn>
void for_each_bag_entry(const BagsView& bags, const index_t* rows, index_t b0, index_t b1,
                        Pooling pooling, const float* dout, index_t dout_stride, const Fn& fn) {
  for (index_t b = b0; b < b1; ++b) {
    const index_t r = rows[b];
    const float scale = bag_scale(bags, r, pooling);
    if (scale == 0.0f) continue;
    const float* g = dout + b * dout_stride;
    const index_t k1 = bags.indptr[r + 1];
    for (index_t k = bags.indptr[r]; k < k1; ++k) {
      fn(k, k1, bags.indices[k], (bags.weights ? bags.weights[k] : 1.0f) * scale, g);
    }
  }
}

}  // namespace

void BagGradient::begin(const BagsView& bags, const index_t* rows, index_t B, Pooling pooling,
                        const float* dout, index_t dout_stride, index_t vocab, index_t cols) {
  if (static_cast<index_t>(slots_.size()) != vocab) {
    // Read at random by id: huge pages when the OS supports them (advised before the first touch).
    std::vector<std::int32_t>().swap(slots_);
    slots_.reserve(static_cast<std::size_t>(vocab));
    advise_huge_pages(slots_.data(), static_cast<std::size_t>(vocab) * sizeof(std::int32_t));
    slots_.assign(static_cast<std::size_t>(vocab), -1);
    parts_.assign(kParts, RowGradient{});
  }
  // Slots are 32-bit: at most 2^31 - 1 contributions per batch (far beyond any real batch).
  index_t entries = 0;
  for (index_t b = 0; b < B; ++b) {
    if (b + kPrefetchRows < B) __builtin_prefetch(bags.indptr + rows[b + kPrefetchRows]);
    entries += bags.indptr[rows[b] + 1] - bags.indptr[rows[b]];
  }
  if (entries >= (index_t{1} << 31)) {
    throw_invalid("bags: expected fewer than 2^31 ids in one batch, got ", entries);
  }
  n_chunks_ = (B + kChunkRows - 1) / kChunkRows;
  if (static_cast<index_t>(staged_.size()) < n_chunks_ * kParts) {
    staged_.resize(static_cast<std::size_t>(n_chunks_ * kParts));
  }
  bags_ = bags;
  rows_ = rows;
  batch_ = B;
  pooling_ = pooling;
  dout_ = dout;
  dout_stride_ = dout_stride;
  cols_ = cols;
}

void BagGradient::stage(index_t b0, index_t b1) {
  // Each chunk of batch rows sorts its entries into the id classes, in entry order.
  for (index_t t = b0 / kChunkRows; t * kChunkRows < b1; ++t) {
    Staged* out = staged_.data() + t * kParts;
    for (int q = 0; q < kParts; ++q) out[q].n = 0;
    for_each_bag_entry(bags_, rows_, t * kChunkRows, std::min(batch_, (t + 1) * kChunkRows),
                       pooling_, dout_, dout_stride_,
                       [&](index_t, index_t, index_t id, float c, const float* g) {
                         // Fields stored in place (a pushed temporary went through the stack
                         // and stalled on store forwarding); the buffer only grows in the
                         // first batches (vector::resize per entry was an out-of-line call
                         // that value-initialised the entry: 2% of the sampled step).
                         Staged& v = out[part_of(id)];
                         if (v.n == v.buf.size()) v.buf.resize(std::max<std::size_t>(64, 2 * v.n));
                         Entry& e = v.buf[v.n++];
                         e.id = id;
                         e.coef = c;
                         e.g = g;
                       });
  }
}

void BagGradient::collect(int q) {
  // Part q takes its entries chunk by chunk: the serial order of contributions.
  RowGradient& part = parts_[static_cast<std::size_t>(q)];
  part.clear_slots();  // only after an exception interrupted the previous collect
  part.reset_shared(slots_.data(), cols_);
  for (index_t t = 0; t < n_chunks_; ++t) {
    const Staged& staged = staged_[static_cast<std::size_t>(t * kParts + q)];
    const Entry* in = staged.buf.data();
    const std::size_t n = staged.n;
    for (std::size_t e = 0; e < n; ++e) {
      if (e + kPrefetchRows < n) part.prefetch(in[e + kPrefetchRows].id);
      part.add(in[e].id, in[e].coef, in[e].g);
    }
  }
  // The slots are only needed while collecting: cleared now, while their lines are in cache
  // (before the next batch they were cold misses, 1% of the sampled step).
  part.clear_slots();
}

UpdateJob Parameter::row_gradient_step(const RowGradient& grad, const OptimizerConfig& config) {
  const StepTarget target = begin_step(*this, config);
  const index_t c = cols();
  const index_t k_rows = grad.size();
  const RowGradient* g = &grad;
  UpdateJob job;
  job.n_tasks = (k_rows + RowGradient::kRowsPerTask - 1) / RowGradient::kRowsPerTask;
  job.scratch_floats = c;
  job.run = [=](std::int64_t t, float* scratch) {
    const index_t begin = t * RowGradient::kRowsPerTask;
    const index_t end = std::min(k_rows, begin + RowGradient::kRowsPerTask);
    update_grouped_rows(target, c, *g, begin, end, scratch);
  };
  return job;
}

void embed_categorical_backward(const index_t* ids, const index_t* rows, index_t B,
                                const float* dout, index_t dout_stride, RowGradient* grad) {
  if (B >= (index_t{1} << 31)) throw_invalid("batch: expected fewer than 2^31 rows, got ", B);
  for (index_t b = 0; b < B; ++b) {
    if (b + kPrefetchRows < B) __builtin_prefetch(ids + rows[b + kPrefetchRows]);
    grad->add(ids[rows[b]], 1.0f, dout + b * dout_stride);
  }
}

}  // namespace fastsoftmax
