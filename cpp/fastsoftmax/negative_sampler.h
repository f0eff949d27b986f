#pragma once
// Proposal distributions Q for sampled softmax, each with its probability Q(j) available for the
// logQ correction (DESIGN.md section 2).
//
// * kUniform: Q(j) = 1/n, one Lemire integer draw per negative.
// * kWeights: a static distribution (popularity counts ** alpha, or user weights) through an
//             AliasSampler; Q(j) = its normalised weight.
// * kInBatch: the negatives are the distinct items among the batch's positive entries, each once
//             (ascending ids), so the cost per batch is bounded by the batch's distinct items. The
//             nnz positive entries are taken as nnz draws from the positive-entry frequency Q(j) of
//             the training targets (given at construction), so item j is in the set with probability
//             pi_j = 1 - (1 - Q(j))^nnz; log_q is log(pi_j / m) (m = the set's size), so that the
//             loss's correction log(m Q) is log pi_j, the expected count of j. num_negatives > 0
//             caps the set: a uniform random subset of that size (pi_j scaled by cap / distinct);
//             0 = no cap. A query's own positives in the set are accidental hits, like any draw's.
//             Streaming estimate (streaming = true; Yi et al. 2019, "Sampling-bias-corrected
//             neural modeling"): instead of the training targets' frequencies, pi_j is estimated
//             online from the batches seen in training (observe()): per item, the step it was
//             last seen, A_j, and a moving average of the gap between sightings, G_j <- (1 - a)
//             G_j + a (t - A_j) (a = streaming_alpha; A and G start at 0, steps count from 1),
//             read with Adam's bias correction for its start at 0 after c_j sightings, G_j / (1 -
//             (1 - a)^c_j), and pi_j = min(1, 1 / that) (1 before j is seen). Without the
//             correction every estimate stays near 1 for the first ~1 / a sightings.
//             Mixed negatives (mixed_uniform = u > 0; Yang et al. 2020): u uniform draws from the
//             whole catalogue follow the set, so rarely-interacted items are pushed away too; every
//             candidate j is corrected by its expected count pi_j (m_b / distinct) + u / n.
// * kScore:   hard negatives, Q_b(j) = exp(z_bj / T) / sum_k exp(z_bk / T) with z the current logits.
//             hard_pool == 0: exact over all n items (needs all B x n logits: the reference mode).
//             hard_pool == M > 0: sampling-importance-resampling (SIR): a pool of M candidates from
//             Q0 (uniform, or the alias table when weights are given), scored with one B x M GEMM,
//             resampled with weights exp(z/T) / Q0(c). The correction uses the implied proposal
//             Qhat_b(j) = exp(z_bj / T) / Zhat_b with Zhat_b = (1/M) sum_i exp(z_b,c_i / T) / Q0(c_i)
//             the pool's importance-sampling estimate of the normaliser. This is an approximation:
//             the true marginal of a SIR draw differs from Q_b by O(1/M) (heavy items are
//             under-drawn), see tests/test_negative_sampler.py for the measured bias.
//             hard_fraction f < 1: m_h = round(f m) hard draws and m - m_h uniform draws; the
//             effective proposal is the mixture Q = (m_h/m) Q_hard + (1 - m_h/m) / n, which is what
//             m Q(j) (the expected count of j among the m draws) is computed from.
//
// Shared (share = true): one set of m draws for the whole batch (the loss's negative logits are then
// one B x m GEMM). For kScore the shared proposal is the batch mixture Qbar(j) = mean_b Q_b(j).
// Per query (share = false): m draws per query row.
//
// Randomness: Rng(seed, stream) with fixed streams (shared draws: streams 0..2; query row b: 3 + b),
// parallel work in fixed chunks: the draws depend on (seed, inputs) only, never on num_threads.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastsoftmax/alias_sampler.h"
#include "fastsoftmax/common.h"

namespace fastsoftmax {

enum class SamplerKind { kUniform, kWeights, kInBatch, kScore };

/// Parses "uniform" | "alias" | "in_batch" | "score"; std::invalid_argument naming `sampler`.
SamplerKind parse_sampler_kind(const std::string& name);

struct NegativeSamplerOptions {
  SamplerKind kind = SamplerKind::kUniform;
  index_t num_negatives = 256;  // m (kInBatch: the cap, 0 = none)
  bool share = true;
  index_t hard_pool = 2048;  // kScore: M; 0 = exact over all items
  double temperature = 1.0;  // kScore: T > 0
  double hard_fraction = 1.0;  // kScore: in [0, 1]
  index_t mixed_uniform = 0;      // kInBatch: uniform draws added to the in-batch set
  bool streaming = false;         // kInBatch: pi_j from the streaming estimate
  double streaming_alpha = 0.01;  // kInBatch, streaming: the moving average's rate a in (0, 1]
};

/// The draws of one batch, written by NegativeSampler::sample (buffers are reused across calls).
struct NegativeDraws {
  index_t rows = 0;  // 1 when shared, else B
  index_t m = 0;     // draws per row
  std::vector<index_t> ids;     // rows x m item ids
  std::vector<float> log_q;     // rows x m: log Q(ids) under the row's (mixture) proposal
  // kScore: per query, log of the (exact or SIR-estimated) normaliser of exp(z / T); size B.
  std::vector<double> log_norm;
  index_t m_hard = 0;  // kScore: number of hard draws per row (the rest are uniform)
  index_t batch_entries = 0, distinct = 0;  // kInBatch: E positive entries, distinct items
  index_t m_uniform = 0;  // kInBatch: the last m_uniform ids are uniform draws (mixed)

  // Scratch, reused across batches.
  std::vector<float> scores;    // B x (pool or n) logits
  RowMatrixXf pool_rows;        // gathered rows of the pool
  std::vector<index_t> pool;    // pool ids
  std::vector<double> cdf;      // per slot cumulative weights
};

/// Inputs of one batch that proposals may need: the query embeddings (score), the item table
/// (score), the batch targets (in-batch). Pointers are borrowed.
struct SamplerBatch {
  index_t B = 0;
  index_t dim = 0;
  const float* psi = nullptr;      // B x dim
  const float* items = nullptr;    // n x dim
  const float* bias = nullptr;     // n or nullptr
  const index_t* indptr = nullptr;   // B + 1 (kInBatch)
  const index_t* indices = nullptr;  // indptr[B] (kInBatch)
  // Per-query draws: row b draws from the stream of key row_keys[b] (B entries, e.g. the rows'
  // indices in the training data, so a row's negatives do not depend on where a shuffle put
  // it), or of key b when nullptr.
  const index_t* row_keys = nullptr;
};

class NegativeSampler {
 public:
  /// `weights` (n entries, may be nullptr): kWeights: the static distribution (required); kInBatch:
  /// the positive-entry frequencies Q(j) (required); kScore: the pool proposal Q0 (nullptr:
  /// uniform). Throws std::invalid_argument naming the bad option.
  NegativeSampler(index_t n_items, const NegativeSamplerOptions& options, const double* weights);

  const NegativeSamplerOptions& options() const { return options_; }
  index_t n_items() const { return n_; }

  /// Draws the negatives of one batch into `out`.
  void sample(const SamplerBatch& batch, std::uint64_t seed, int num_threads,
              NegativeDraws& out) const;

  /// log Q(j) of item j under the proposal of query b for the batch `draws` was drawn for.
  /// `z_col` (kScore only): the logits of item j for all B queries of the batch (only z_col[b] is
  /// read when draws are per query).
  double log_q(const NegativeDraws& draws, index_t b, index_t j, const float* z_col) const;

  /// Static Q(j) (kUniform, kWeights, kInBatch).
  double static_probability(index_t j) const;

  /// kInBatch with streaming: updates the estimate with training step `step` (>= 1, increasing)
  /// whose positive entries are indices[0..nnz) (each distinct item once).
  void observe(const index_t* indices, index_t nnz, std::int64_t step);
  /// kInBatch: the estimated probability pi_j that item j is among a batch's positives.
  double in_batch_probability(const NegativeDraws& draws, index_t j) const;

 private:
  void sample_score(const SamplerBatch& batch, std::uint64_t seed, int num_threads,
                    NegativeDraws& out) const;
  void sample_score_exact(const SamplerBatch& batch, std::uint64_t seed, int num_threads,
                          NegativeDraws& out) const;
  void sample_score_pool(const SamplerBatch& batch, std::uint64_t seed, int num_threads,
                         NegativeDraws& out) const;
  void sample_in_batch(const SamplerBatch& batch, std::uint64_t seed, NegativeDraws& out) const;
  // kInBatch: log(pi_j / m) for the set the draws hold (see the header comment).
  float in_batch_log_q(const NegativeDraws& draws, index_t j) const;
  double mix_log(double log_q_hard) const;  // log(f exp(log_q_hard) + (1 - f) / n), f = m_h / m

  index_t n_;
  NegativeSamplerOptions options_;
  std::unique_ptr<AliasSampler> alias_;  // kWeights, or the kScore pool proposal
  std::vector<double> q_;                // static probabilities (kWeights, kInBatch, kScore pool)
  std::vector<float> log_q_static_;      // log of q_ (float, -inf for zero)
  index_t m_hard_ = 0;
  std::vector<std::int64_t> last_seen_;  // streaming: A_j
  std::vector<double> gap_;              // streaming: G_j
  std::vector<double> decay_;            // streaming: (1 - a)^c_j after c_j sightings
  std::vector<index_t> observed_;        // scratch: a batch's distinct items
};

}  // namespace fastsoftmax
