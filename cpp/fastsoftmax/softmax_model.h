#pragma once
// The softmax DNN and its training loop.
//
// Query tower (tower.h): query features -> psi(x) (dim). Items: a table V (n_items x dim) with an
// optional item bias; a compressed table (qr_table.h: quotient-remainder or hybrid, with an
// optional item bias); or an item tower over item features (V_j = tower(features of item j);
// new items get embeddings from their features without retraining). A Loss (softmax_loss.h) turns
// psi, V and the batch targets into the loss and gradients; the model back-propagates through the
// towers and applies the optimiser: dense for the MLPs, row-sparse and lazy for the embedding
// tables, dense or row-sparse for the item table depending on the loss. With an item tower, each
// step computes V only for the items the loss reads (Loss::candidates: a sampled loss's
// positives and negatives), or for all items (full softmax, hard negatives), and back-propagates
// the item gradient through the item tower. A compressed table does the same: only the rows the
// loss reads are computed (a compact candidate table, ItemParamsView::slot), and their gradient
// reaches only the touched rows of its factors.
//
// Determinism: epoch e visits the rows in the permutation drawn from Rng(seed, kShuffleStream + e);
// batch i of the whole run has LossContext::batch_index = e * batches_per_epoch + i; all parallel
// work is split into fixed chunks and reduced in a fixed order. A fixed seed and thread count
// therefore give bit-identical parameters.
//
// Thread safety: fit_epoch, query_embeddings, item_embeddings and evaluate share per-batch
// scratch and take an internal lock, so concurrent calls on one model (Python threads with the
// GIL released) are serialised rather than racing.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"
#include "fastsoftmax/history.h"
#include "fastsoftmax/qr_table.h"
#include "fastsoftmax/softmax_loss.h"
#include "fastsoftmax/tower.h"

namespace fastsoftmax {

struct SoftmaxModelConfig {
  index_t n_items = 0;
  index_t dim = 64;
  std::vector<index_t> hidden;
  FeatureSchema features;
  Pooling pooling = Pooling::kMean;
  HistoryConfig history;  // training-time corruption of a history bag (history.h)
  bool item_bias = false;
  // An item tower over item features instead of the item table (no item bias then).
  bool item_tower = false;
  FeatureSchema item_features;
  std::vector<index_t> item_hidden;
  // Item tower: each training item's own id embedding E_j (dim columns), added to the tower's
  // output: V_j = tower(f_j) + E_j; new items have none (E = 0). At every step each item's E_j
  // is dropped with probability item_id_dropout, so that the features alone, which are all a new
  // item has, also learn to place items.
  bool item_id_embedding = false;
  float item_id_dropout = 0.0f;
  // A compressed item table instead of V when item_buckets > 0 (qr_table.h): quotient-remainder
  // with item_buckets rows of R; item_dedicated: sorted ids with rows of their own (hybrid).
  index_t item_buckets = 0;
  std::vector<index_t> item_dedicated;
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
  void check_features(const FeaturesView& features) const { query_.check_features(features); }
  /// The same for item features (requires an item tower).
  void check_item_features(const FeaturesView& features) const;
  /// Checks raw targets: rows == expected_rows, ids in [0, n_items), strictly increasing within a
  /// row, weights finite and >= 0, every row with a positive sum (std::invalid_argument /
  /// std::out_of_range naming `targets`).
  void check_targets(const TargetsView& targets, index_t expected_rows) const;

  /// One epoch over all rows (targets with raw weights; normalised per row here). Returns the
  /// mean loss over the epoch's batches (each at the parameters before its step). `items`: the
  /// features of the n_items items (required with an item tower, ignored otherwise).
  double fit_epoch(const FeaturesView& features, const TargetsView& targets, std::int64_t epoch,
                   const FeaturesView* items = nullptr);

  /// keep[k] for every entry k of the history bag: whether fit's epoch `epoch` keeps it (the
  /// corruption's draws, for inspection; with HistoryTarget::kDropped a row whose targets are all
  /// kept sits that epoch out). Requires a history feature.
  void history_kept(const FeaturesView& features, std::int64_t epoch, std::uint8_t* keep) const;

  /// psi for every row into out (rows x dim).
  void query_embeddings(const FeaturesView& features, float* out);
  /// Rows [begin, end) of a compressed item table's V into out ((end - begin) x dim).
  void item_rows(index_t begin, index_t end, float* out);
  /// The item tower's embedding of every row of `items` into out (rows x dim). `own_ids`: the
  /// rows are the n_items training items, with their id embeddings; otherwise they are items
  /// without one (new items).
  void item_embeddings(const FeaturesView& items, float* out, bool own_ids);

  /// Mean loss over the rows; with `gradients` (one buffer per parameter, same shapes), also the
  /// gradient of that mean loss. `seed` feeds the loss context (sampled losses). `items` as in
  /// fit_epoch.
  double evaluate(const FeaturesView& features, const TargetsView& targets, std::uint64_t seed,
                  std::vector<RowMatrixXf>* gradients, const FeaturesView* items = nullptr);

  /// The trainable parameters in a fixed order with their names: the query tower's
  /// (mlp.<l>.weight, mlp.<l>.bias, categorical.<name>, bags.<name>), then item_embeddings and
  /// item_bias (a compressed table: item_qr.quotient, item_qr.remainder[, item_qr.dedicated]
  /// instead of item_embeddings), or the item tower's (item_tower.mlp.<l>.weight, ...).
  std::vector<std::pair<std::string, Parameter*>> parameters();

  /// Calls the loss's prepare() with these (raw) targets and the current item table; fit calls it
  /// with the training targets (sampled losses build popularity proposals there).
  void prepare_loss(const TargetsView& targets);

  /// Number of optimiser steps taken so far.
  std::int64_t steps() const { return steps_; }
  /// Resets the optimiser state of every parameter (e.g. after loading parameters).
  void reset_optimizer_state();

 private:
  // V is computed from other parameters (item tower or compressed table).
  bool computed_items() const { return config_.item_tower || config_.item_buckets > 0; }
  // The items' parameters as the loss sees them. With computed items: computes V at the items
  // the loss will read (all of them, or its candidates tower_rows_) into item_values_ (compact,
  // through item_slot_, when only candidates) and returns a view of them.
  // `training`: with id-dropout.
  ItemParamsView item_view(const TargetsView& targets, const LossContext& ctx, const float* psi,
                           const FeaturesView* items, bool for_backward, bool training);
  // The item tower's rows of V (after item_tower_.forward) into item_values_.
  void tower_values(const index_t* rows, index_t C);
  // Back-propagates the loss's item gradient into the parameters V is computed from (after
  // item_view).
  void computed_items_backward(const FeaturesView& items, bool accumulate);
  void item_tower_backward(const FeaturesView& items, bool accumulate);
  // The optimiser jobs of the item table (plain or compressed) and bias.
  void add_item_table_steps(const OptimizerConfig& opt);
  const FeaturesView& require_items(const FeaturesView* items) const;
  // id_kept_ for the tower's rows of a batch: whether each item's id embedding takes part
  // (training: dropped with probability item_id_dropout, from a hash of (seed, batch, item)).
  void draw_ids(const index_t* rows, index_t C, std::uint64_t batch_index, bool training);
  // The tower's output for every row of x into out (rows x dim), in batches.
  void embed_rows(Tower& tower, const FeaturesView& x, float* out);
  // Gathers the targets of rows[0..B) into the batch CSR with normalised weights.
  TargetsView gather_targets(const TargetsView& targets, const index_t* rows, index_t B);
  // The optimiser steps of one training batch.
  void step(const OptimizerConfig& opt);
  // Adds the last batch's item gradient to gradients (evaluate; g: items' first parameter).
  void add_item_gradients(std::vector<RowMatrixXf>& gradients, std::size_t g);

  SoftmaxModelConfig config_;
  std::unique_ptr<Loss> loss_;
  std::mutex mutex_;  // held by fit_epoch / query_embeddings / item_embeddings / evaluate
  Tower query_;
  Tower item_tower_;     // with config_.item_tower
  Parameter items_;      // n_items x dim: V, or with an item tower the id embeddings E (or empty)
  QrItemTable qr_;       // with config_.item_buckets > 0 (items_ empty then)
  Parameter item_bias_;  // n_items x 1 (empty without bias)
  std::int64_t steps_ = 0;

  // Per-batch scratch, reused.
  std::vector<UpdateJob> update_jobs_;
  ItemGradient item_grad_;
  std::vector<index_t> perm_;
  std::vector<index_t> batch_indptr_, batch_indices_;
  std::vector<float> batch_weights_;
  HistoryCorruption history_;
  std::vector<index_t> positions_;  // 0, 1, 2, ...: the rows of a by-position bag
  // Computed items: the items of the last item_view (sorted; all items when the loss reads all),
  // V at those rows (item_values_, C x dim in that order) and each one's row there (item_slot_,
  // n_items entries, only meaningful at those items).
  std::vector<index_t> tower_rows_, all_items_;
  std::vector<float> item_values_;
  std::vector<std::int32_t> item_slot_;
  std::vector<std::uint8_t> id_kept_;  // per tower row: E_j added (id embedding, not dropped)
  std::vector<index_t> id_rows_;       // the kept rows' item ids, and their gradient (backward)
  RowMatrixXf id_grad_;
  bool tower_all_ = false;
};

}  // namespace fastsoftmax
