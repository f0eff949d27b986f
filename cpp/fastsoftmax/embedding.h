#pragma once
// Trainable parameters with their optimiser state, embedding tables, and pooled bag lookups.
//
// * Parameter: a row-major float32 matrix (a weight matrix, a bias as 1 x m, an embedding table, the
//   item table V) plus the state of its optimiser. Updates are either dense (all rows; the MLP and
//   the item table under full softmax) or row-sparse and lazy (only the rows present in a batch;
//   embedding tables and V under sparse losses). L2 is weight decay on the rows a step touches:
//   g <- g + l2 * theta, i.e. the gradient of (l2 / 2) ||theta||^2 restricted to those rows.
//   SGD:     theta -= lr * g
//   Adagrad: G += g^2; theta -= lr * g / (sqrt(G) + eps)                 (eps = 1e-10, as PyTorch)
//   Adam:    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//            theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)   (PyTorch's form; t
//            counts the steps of this parameter, for lazy rows too, as torch.optim.SparseAdam)
//   Element updates are independent, so the result does not depend on the thread count.
// * Bags: row b of a CSR (ids with per-id weights w) is pooled as sum_k c_k T[id_k] with
//   c_k = w_k (sum), w_k / sum_k w_k (mean), w_k / sqrt(sum_k w_k^2) (sqrtn); an empty bag (or a
//   zero normaliser) gives the zero vector.

#include <cstdint>
#include <functional>
#include <vector>

#include "fastsoftmax/common.h"

namespace fastsoftmax {

enum class OptimizerKind { kSgd, kAdagrad, kAdam };

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::kAdagrad;
  float learning_rate = 0.05f;
  float l2 = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float adagrad_eps = 1e-10f;
  float adam_eps = 1e-8f;
};

/// Parses "sgd" | "adagrad" | "adam"; throws std::invalid_argument naming `optimizer` otherwise.
OptimizerKind parse_optimizer(const std::string& name);

class RowGradient;
class BagGradient;

/// m = zeros(rows, cols). Large buffers (embedding tables, the item table and their optimiser
/// state) are first advised to use transparent huge pages where the OS supports it: their rows are
/// read and updated at random, and 4 KiB pages would make nearly every row a TLB miss.
void allocate_zeroed(RowMatrixXf& m, index_t rows, index_t cols);

/// m[i] = a * (2u - 1) with u uniform in [0, 1) from Rng(seed, stream), in storage order.
void fill_uniform(RowMatrixXf& m, float a, std::uint64_t seed, std::uint64_t stream);

/// Advises transparent huge pages for the whole 2 MiB pages inside [data, data + bytes) (a hint,
/// effective for pages not yet touched; nothing happens on other systems or for small buffers).
void advise_huge_pages(void* data, std::size_t bytes);

/// One optimiser step of a parameter split into fixed tasks, so that the steps of several
/// parameters can share one parallel region (run_update_jobs). run(task, scratch) updates the
/// task's elements; scratch holds at least scratch_floats floats private to the running thread.
/// The step's bookkeeping (state allocation, step counter) is done when the job is made.
struct UpdateJob {
  std::int64_t n_tasks = 0;
  index_t scratch_floats = 0;
  std::function<void(std::int64_t task, float* scratch)> run;
};

/// Runs the jobs' tasks in one parallel region (jobs' tasks in the given order). Element updates
/// are independent, so the results do not depend on the thread count or the order.
void run_update_jobs(const std::vector<UpdateJob>& jobs, int num_threads);

class Parameter {
 public:
  Parameter() = default;
  Parameter(index_t rows, index_t cols) { allocate_zeroed(value, rows, cols); }

  index_t rows() const { return value.rows(); }
  index_t cols() const { return value.cols(); }

  /// Allocates (zeroed) optimiser state for `config` and resets the step counter.
  void reset_state(const OptimizerConfig& config);

  /// One step with a dense gradient of the same shape as value (row-major, contiguous). With
  /// `after`, each task updates whole rows (a multiple of `row_multiple`, about the same number
  /// of elements as otherwise) and then calls after(r0, r1) for its rows [r0, r1), their new
  /// values final.
  UpdateJob dense_step(const float* grad, const OptimizerConfig& config,
                       std::function<void(index_t r0, index_t r1)> after = nullptr,
                       index_t row_multiple = 1);

  /// One lazy step on rows[0..k) with gradient rows grad[i * cols .. (i+1) * cols) (row ids
  /// unique). Other rows and their state are untouched.
  UpdateJob rows_step(const index_t* rows, index_t k, const float* grad,
                      const OptimizerConfig& config);

  /// Same as materialising `grad` and a rows_step on its rows, without the intermediate gradient
  /// buffer (a row with one contribution is applied directly, any other summed into the task's
  /// scratch first).
  UpdateJob row_gradient_step(const RowGradient& grad, const OptimizerConfig& config);

  /// The same for a BagGradient (after its rows are staged): one task per part, which collects
  /// and applies that part.
  UpdateJob bag_gradient_step(BagGradient& grad, const OptimizerConfig& config);

  RowMatrixXf value;
  RowMatrixXf state1;  // Adagrad: sum of squares; Adam: first moment
  RowMatrixXf state2;  // Adam: second moment
  std::int64_t step = 0;
};

enum class Pooling { kMean, kSum, kSqrtN };

/// Parses "mean" | "sum" | "sqrtn"; throws std::invalid_argument naming `pooling` otherwise.
Pooling parse_pooling(const std::string& name);

/// A bag feature: CSR rows of ids with per-id weights (weights may be nullptr: all ones).
struct BagsView {
  const index_t* indptr = nullptr;
  const index_t* indices = nullptr;
  const float* weights = nullptr;
};

/// out[b, 0..e) = table[ids[rows[b]]] for b in [0, B), out rows `out_stride` floats apart.
void embed_categorical(const RowMatrixXf& table, const index_t* ids, const index_t* rows, index_t B,
                       float* out, index_t out_stride, int num_threads);

/// out[b, 0..e) = pooled bag rows[b] (see the header comment).
void embed_bags(const RowMatrixXf& table, const BagsView& bags, const index_t* rows, index_t B,
                Pooling pooling, float* out, index_t out_stride, int num_threads);

/// Row-sparse gradient of a table with `vocab` rows and `cols` columns, built from contributions
/// add(id, c, g) meaning grad[id] += c * g. add() only records the contribution (g is read later and
/// must stay valid until materialize() / Parameter::apply_row_gradient()); the touched rows are kept
/// in first-touch order. Each row's gradient is the sum of its contributions in the order they were
/// added (starting from 0), computed in parallel over fixed chunks of rows, so the result does not
/// depend on the thread count. Reusable across batches without reallocating in steady state.
class RowGradient {
 public:
  void reset(index_t vocab, index_t cols);
  /// Like reset, but slots are looked up in `slots` (vocab entries, -1 where untouched), an
  /// array shared by several RowGradients that receive disjoint ids (see BagGradient). This
  /// instance's entries there must already be back at -1 (clear_slots()).
  void reset_shared(std::int32_t* slots, index_t cols);
  /// Starts a gradient built row by row, without a slot array: append_row(id) starts the next
  /// row (ids unique: the caller's guarantee), add_to_last(c, g) records grad[that row] += c * g.
  /// add() and touch() are invalid until the next reset().
  void reset_sequential(index_t cols);
  std::int32_t append_row(index_t id) {
    const auto s = static_cast<std::int32_t>(rows_.size());
    rows_.push_back(id);
    first_.push_back(-1);
    last_.push_back(-1);
    return s;
  }
  void add_to_last(float coef, const float* g) {
    link(rows_.size() - 1, push_contribution(coef, g));
  }
  /// Sets this instance's entries of its slot array back to -1 (a no-op when they already are).
  /// The rows and contributions stay: afterwards only further add()/touch() calls are invalid.
  void clear_slots();
  /// Records grad[id] += coef * g; returns the row's slot (its index in rows()).
  std::int32_t add(index_t id, float coef, const float* g) {
    const std::int32_t n = push_contribution(coef, g);
    const std::int32_t s = slot_[id];
    if (s < 0) return new_slot(id, n);
    link(static_cast<std::size_t>(s), n);
    return s;
  }
  /// Makes id a touched row (its gradient 0 unless contributions follow); returns its slot.
  std::int32_t touch(index_t id) {
    const std::int32_t s = slot_[id];
    return s < 0 ? new_slot(id, -1) : s;
  }
  /// Hint: add(id, ...) follows soon (prefetches the row's slot entry).
  void prefetch(index_t id) const { __builtin_prefetch(slot_ + id); }
  index_t size() const { return static_cast<index_t>(rows_.size()); }
  index_t cols() const { return cols_; }
  /// Touched rows (unique), first-touch order.
  const std::vector<index_t>& rows() const { return rows_; }
  /// Sums the contributions into grad() (size() x cols, row i for rows()[i]).
  void materialize(int num_threads);
  /// The same into out (size() x cols floats, rows `cols` apart).
  void sum_rows(float* out, int num_threads);
  const float* grad() const { return grad_.data(); }

  /// Rows per parallel task when summing (fixed).
  static constexpr index_t kRowsPerTask = 256;
  /// Row i's contribution when it has exactly one: true and (coef, g); false otherwise.
  bool single(index_t i, float* coef, const float** g) const {
    const std::int32_t k = first_[static_cast<std::size_t>(i)];
    if (k < 0) return false;
    const Contribution& c = contrib_[static_cast<std::size_t>(k)];
    if (c.next >= 0) return false;
    *coef = c.coef;
    *g = c.g;
    return true;
  }
  /// out[0..cols) = sum of row i's contributions, in order.
  void sum_row(index_t i, float* out) const;

 private:
  // Contributions in the order added; each row's form a list (first_ -> next -> ... -> -1), so
  // a row's contributions are visited in the order they were added without sorting.
  struct Contribution {
    float coef;
    std::int32_t next;  // the row's next contribution, -1 at the end
    const float* g;
  };
  // Appends a contribution (not yet in any row's list); returns its index.
  std::int32_t push_contribution(float coef, const float* g) {
    if (contrib_.size() >= static_cast<std::size_t>(INT32_MAX)) {
      throw_invalid("row gradient: expected fewer than 2^31 contributions in one batch");
    }
    const auto n = static_cast<std::int32_t>(contrib_.size());
    contrib_.push_back(Contribution{coef, -1, g});
    return n;
  }
  // Makes contribution n the last of slot i's list.
  void link(std::size_t i, std::int32_t n) {
    if (last_[i] < 0) {
      first_[i] = n;
    } else {
      contrib_[static_cast<std::size_t>(last_[i])].next = n;
    }
    last_[i] = n;
  }
  // A new row for id whose first and last contribution is `contribution` (-1: none yet).
  std::int32_t new_slot(index_t id, std::int32_t contribution) {
    const auto s = static_cast<std::int32_t>(rows_.size());
    slot_[id] = s;
    slots_clear_ = false;
    rows_.push_back(id);
    first_.push_back(contribution);
    last_.push_back(contribution);
    return s;
  }
  index_t cols_ = 0;
  // Slot of each id: vocab entries, -1 when untouched (32-bit: a batch has far fewer than 2^31
  // distinct rows, and half the bytes of a random-access array as large as the vocabulary).
  std::vector<std::int32_t> own_slots_;  // unless shared
  std::int32_t* slot_ = nullptr;         // own_slots_.data() or the shared array
  bool slots_clear_ = true;              // no entry of slot_ refers to this instance's rows
  std::vector<index_t> rows_;
  std::vector<Contribution> contrib_;
  std::vector<std::int32_t> first_, last_;  // per slot: first and last contribution, -1 if none
  std::vector<float> grad_;
};

/// The row-sparse gradient of a bag table, built and applied in parallel: ids are split into
/// kParts fixed classes (part_of(id)), each a RowGradient over a shared slot array. Building
/// stages the contributions per fixed chunk of batch rows and class, then each class adds its
/// staged contributions chunk by chunk, so every row receives its contributions in the same order
/// as a serial RowGradient would (batch row, then bag entry): the sums, and the updates, are
/// identical to the serial ones and do not depend on the thread count.
class BagGradient {
 public:
  static constexpr int kParts = 16;
  static constexpr index_t kChunkRows = 32;

  /// Starts the gradient of a batch, the backward of embed_bags: grad[id_k] += c_k * dout[b] for
  /// every entry of bag rows[b], b < B. The arguments' arrays must stay valid until the parts are
  /// collected.
  void begin(const BagsView& bags, const index_t* rows, index_t B, Pooling pooling,
             const float* dout, index_t dout_stride, index_t vocab, index_t cols);
  /// Stages the entries of batch rows [b0, b1) (b0 a multiple of kChunkRows, b1 one too or B)
  /// once their rows of dout are final. Disjoint ranges may be staged concurrently.
  void stage(index_t b0, index_t b1);
  /// Part p takes its staged entries, chunk by chunk (after every row is staged). Different
  /// parts may be collected concurrently.
  void collect(int p);
  RowGradient& part(int p) { return parts_[static_cast<std::size_t>(p)]; }
  /// The class of an id: blocks of 16 consecutive ids (one cache line of 32-bit slots, 4 KiB of
  /// a 64-wide float table) assigned to classes by a multiplicative hash. (A class made of every
  /// 16th block, as before, put all of a class's rows at the same few address bits, so one
  /// class's rows competed for 1/16 of the L2 sets; the hash spreads them: 3.5% faster steps,
  /// paired measurement.)
  static int part_of(index_t id) {
    static_assert(kParts == 16, "the hash takes the top 4 bits");
    return static_cast<int>((static_cast<std::uint64_t>(id >> 4) * 0x9E3779B97F4A7C15ULL) >> 60);
  }

 private:
  struct Entry {
    index_t id;
    float coef;
    const float* g;
  };
  std::vector<std::int32_t> slots_;  // huge-page advised when large
  std::vector<RowGradient> parts_;
  struct Staged {
    std::vector<Entry> buf;  // entries [0, n) are this batch's; the rest is reserve
    std::size_t n = 0;
  };
  std::vector<Staged> staged_;  // chunk * kParts + part
  BagsView bags_;
  const index_t* rows_ = nullptr;
  index_t batch_ = 0, n_chunks_ = 0, cols_ = 0, dout_stride_ = 0;
  Pooling pooling_ = Pooling::kMean;
  const float* dout_ = nullptr;
};

/// Backward of embed_categorical: grad[ids[rows[b]]] += dout[b].
void embed_categorical_backward(const index_t* ids, const index_t* rows, index_t B,
                                const float* dout, index_t dout_stride, RowGradient* grad);

}  // namespace fastsoftmax
