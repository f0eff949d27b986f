#pragma once
// The softmax DNN and its training loop.
//
// Query tower: input x = [dense features | one embedding per categorical feature | one pooled
// embedding per bag feature] -> Mlp -> psi(x) (dim). Item table V (n_items x dim), optional item
// bias. A Loss (softmax_loss.h) turns psi, V and the batch targets into the loss and gradients;
// the model back-propagates through the MLP and the embedding lookups and applies the optimiser:
// dense for the MLP, row-sparse and lazy for the embedding tables, dense or row-sparse for V
// depending on the loss.
//
// Determinism: epoch e visits the rows in the permutation drawn from Rng(seed, kShuffleStream + e);
// batch i of the whole run has LossContext::batch_index = e * batches_per_epoch + i; all parallel
// work is split into fixed chunks and reduced in a fixed order. A fixed seed and thread count
// therefore give bit-identical parameters.
//
// Thread safety: fit_epoch, query_embeddings and evaluate share per-batch scratch and take an
// internal lock, so concurrent calls on one model (Python threads with the GIL released) are
// serialised rather than racing.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"
#include "fastsoftmax/history.h"
#include "fastsoftmax/mlp.h"
#include "fastsoftmax/softmax_loss.h"

namespace fastsoftmax {

/// Names, vocabulary sizes and embedding dimensions of the query features.
struct FeatureSchema {
  index_t n_dense = 0;
  std::vector<std::string> categorical_names;
  std::vector<index_t> categorical_vocab, categorical_dim;
  std::vector<std::string> bag_names;
  std::vector<index_t> bag_vocab, bag_dim;
};

/// Query features of `rows` rows (pointers into caller-owned arrays).
struct FeaturesView {
  index_t rows = 0;
  const float* dense = nullptr;                // rows x n_dense, row-major
  std::vector<const index_t*> categorical;     // each: rows ids
  std::vector<BagsView> bags;                  // each: CSR with rows rows
  // A bag whose CSR rows are the batch positions 0..B-1 rather than data rows (the corrupted
  // history of a training batch); -1: none.
  index_t by_position_bag = -1;
};

struct SoftmaxModelConfig {
  index_t n_items = 0;
  index_t dim = 64;
  std::vector<index_t> hidden;
  FeatureSchema features;
  Pooling pooling = Pooling::kMean;
  HistoryConfig history;  // training-time corruption of a history bag (history.h)
  bool item_bias = false;
  OptimizerConfig optimizer;
  index_t batch_size = 256;
  std::uint64_t seed = 0;
  int num_threads = 0;
};

class SoftmaxModel {
 public:
  static constexpr std::uint64_t kShuffleStream = 1ULL << 63;
  static constexpr std::uint64_t kInitStream = 1ULL << 62;

  /// Builds and initialises the parameters from `config.seed`. Throws std::invalid_argument for
  /// an invalid configuration.
  SoftmaxModel(const SoftmaxModelConfig& config, std::unique_ptr<Loss> loss);

  const SoftmaxModelConfig& config() const { return config_; }
  const Loss& loss_function() const { return *loss_; }

  /// Checks ids against the vocabularies (std::out_of_range naming the feature) and shapes.
  void check_features(const FeaturesView& features) const;
  /// Checks raw targets: rows == expected_rows, ids in [0, n_items), strictly increasing within a
  /// row, weights finite and >= 0, every row with a positive sum (std::invalid_argument /
  /// std::out_of_range naming `targets`).
  void check_targets(const TargetsView& targets, index_t expected_rows) const;

  /// One epoch over all rows (targets with raw weights; normalised per row here). Returns the
  /// mean loss over the epoch's batches (each at the parameters before its step).
  double fit_epoch(const FeaturesView& features, const TargetsView& targets, std::int64_t epoch);

  /// keep[k] for every entry k of the history bag: whether fit's epoch `epoch` keeps it (the
  /// corruption's draws, for inspection; with HistoryTarget::kDropped a row whose targets are all
  /// kept sits that epoch out). Requires a history feature.
  void history_kept(const FeaturesView& features, std::int64_t epoch, std::uint8_t* keep) const;

  /// psi for every row into out (rows x dim).
  void query_embeddings(const FeaturesView& features, float* out);

  /// Mean loss over the rows; with `gradients` (one buffer per parameter, same shapes), also the
  /// gradient of that mean loss. `seed` feeds the loss context (sampled losses).
  double evaluate(const FeaturesView& features, const TargetsView& targets, std::uint64_t seed,
                  std::vector<RowMatrixXf>* gradients);

  /// The trainable parameters in a fixed order with their names: mlp.<l>.weight, mlp.<l>.bias,
  /// categorical.<name>, bags.<name>, item_embeddings, item_bias.
  std::vector<std::pair<std::string, Parameter*>> parameters();

  /// Calls the loss's prepare() with these (raw) targets and the current item table; fit calls it
  /// with the training targets (sampled losses build popularity proposals there).
  void prepare_loss(const TargetsView& targets);

  /// Number of optimiser steps taken so far.
  std::int64_t steps() const { return steps_; }
  /// Resets the optimiser state of every parameter (e.g. after loading parameters).
  void reset_optimizer_state();

 private:
  // Forward through the tower for rows[0..B); psi ends up in ws_.acts.back(). `for_backward`:
  // a backward_tower follows (its weight packing is done in the forward's parallel region).
  // `side_task`: independent work run as one more task of the forward's region.
  void forward_tower(const FeaturesView& features, const index_t* rows, index_t B,
                     bool for_backward = false,
                     const std::function<void()>& side_task = nullptr);
  // Gathers the targets of rows[0..B) into the batch CSR with normalised weights.
  TargetsView gather_targets(const TargetsView& targets, const index_t* rows, index_t B);
  // Back-propagates dL/dpsi (in ws_.grads.back()) into the MLP gradients (added to dW_ / db_
  // with `accumulate`, else written over them) and the embedding row gradients (reset first).
  void backward_tower(const FeaturesView& features, const index_t* rows, index_t B,
                      bool accumulate);
  ItemParamsView item_view() const;
  // The rows of bag i's CSR for a batch of data rows `rows` (batch positions for a by-position
  // bag).
  const index_t* bag_rows(const FeaturesView& x, std::size_t i, const index_t* rows) const;

  SoftmaxModelConfig config_;
  std::unique_ptr<Loss> loss_;
  std::mutex mutex_;  // held by fit_epoch / query_embeddings / evaluate
  Mlp mlp_;
  std::vector<Parameter> categorical_tables_;
  std::vector<Parameter> bag_tables_;
  Parameter items_;      // n_items x dim
  Parameter item_bias_;  // n_items x 1 (empty without bias)
  std::vector<index_t> offsets_cat_, offsets_bag_;  // column offsets in the tower input
  std::int64_t steps_ = 0;

  // Per-batch scratch, reused.
  Mlp::Workspace ws_;
  std::vector<RowMatrixXf> dW_, db_;
  std::vector<RowGradient> cat_grads_;
  std::vector<BagGradient> bag_grads_;
  std::vector<UpdateJob> update_jobs_;
  ItemGradient item_grad_;
  std::vector<index_t> perm_;
  std::vector<index_t> batch_indptr_, batch_indices_;
  std::vector<float> batch_weights_;
  HistoryCorruption history_;
  std::vector<index_t> positions_;  // 0, 1, 2, ...: the rows of a by-position bag
};

}  // namespace fastsoftmax
