#pragma once
// A tower: features -> input x = [dense | one embedding per categorical feature | one pooled
// embedding per bag feature] -> Mlp -> output (dim). The softmax DNN has a query tower and,
// optionally, an item tower over item features (softmax_model.h); both are this class.
//
// Forward and backward run over a list of data rows (a batch of queries, or the items a loss
// reads); the activations of the last forward stay in the tower's workspace until the next one,
// so a backward must follow its own forward before the tower is used again. Parallel work is
// split into fixed chunks (Mlp, BagGradient), so results do not depend on the thread count.

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"
#include "fastsoftmax/mlp.h"

namespace fastsoftmax {

/// Names, vocabulary sizes and embedding dimensions of a tower's features.
struct FeatureSchema {
  index_t n_dense = 0;
  std::vector<std::string> categorical_names;
  std::vector<index_t> categorical_vocab, categorical_dim;
  std::vector<std::string> bag_names;
  std::vector<index_t> bag_vocab, bag_dim;
};

/// Features of `rows` rows (pointers into caller-owned arrays).
struct FeaturesView {
  index_t rows = 0;
  const float* dense = nullptr;             // rows x n_dense, row-major
  std::vector<const index_t*> categorical;  // each: rows ids
  std::vector<BagsView> bags;               // each: CSR with rows rows
  // A bag whose CSR rows are the batch positions 0..B-1 rather than data rows (the corrupted
  // history of a training batch); -1: none.
  index_t by_position_bag = -1;
};

class Tower {
 public:
  Tower() = default;
  /// `what` names the tower in error messages ("" for the query tower, "item_features" for the
  /// item tower). Throws std::invalid_argument for an invalid schema or layer sizes.
  Tower(const FeatureSchema& schema, Pooling pooling, const std::vector<index_t>& hidden,
        index_t dim, std::string what);

  /// Initialises the parameters, one random stream each from `stream` on (incremented): the
  /// MLP's weights (He-uniform for ReLU layers, Glorot-uniform for the output layer; biases 0),
  /// then the categorical and bag tables (uniform with standard deviation 1 / sqrt(columns)).
  void initialize(std::uint64_t seed, std::uint64_t& stream);

  const FeatureSchema& schema() const { return schema_; }
  index_t dim() const { return mlp_.output_dim(); }

  /// Checks ids against the vocabularies (std::out_of_range naming the feature) and shapes.
  void check_features(const FeaturesView& features) const;

  /// Forward for rows[0..B) (by_position_bag's rows are `positions`); the output is the first
  /// B rows of output(). `for_backward`: a backward follows (its weight packing is done in the
  /// forward's parallel region). `side_task`: independent work run as one more task of it.
  void forward(const FeaturesView& x, const index_t* rows, index_t B, int num_threads,
               bool for_backward = false, const std::function<void()>& side_task = nullptr,
               const index_t* positions = nullptr);
  const RowMatrixXf& output() const { return ws_.acts.back(); }
  /// dL/doutput of the rows of the last forward (B x dim, row-major), to be filled before
  /// backward().
  float* output_grad() { return ws_.grads.back().data(); }

  /// Back-propagates output_grad() into the MLP gradients (added to them with `accumulate`, else
  /// written over them) and the embedding row gradients (reset first). Arguments as in the forward.
  void backward(const FeaturesView& x, const index_t* rows, index_t B, int num_threads,
                bool accumulate, const index_t* positions = nullptr);

  /// Sizes the MLP gradient buffers, zeroed with `zero` (before backwards that accumulate).
  void prepare_gradients(bool zero);
  /// Marks the packed weights stale (the weights may change between fits: they are numpy views).
  void invalidate_packs() { ws_.packs_current = false; }
  /// The optimiser steps of the last backward's gradients: bag tables (the large jobs) and the
  /// rest (MLP layers, which also pack the new weights for the next forward, and categorical
  /// tables). After running them, call steps_done().
  void add_table_steps(const OptimizerConfig& opt, std::vector<UpdateJob>& jobs);
  void add_dense_steps(const OptimizerConfig& opt, std::vector<UpdateJob>& jobs);
  void steps_done() { ws_.packs_current = true; }

  /// For exact gradients over several batches (out: one matrix per parameter in parameters()
  /// order, this tower's from out[first] on): add_table_gradients adds the last backward's
  /// embedding-table gradients; copy_mlp_gradients copies the MLP's, accumulated by backwards
  /// with `accumulate` since prepare_gradients(true).
  void add_table_gradients(std::vector<RowMatrixXf>& out, std::size_t first, int num_threads);
  void copy_mlp_gradients(std::vector<RowMatrixXf>& out, std::size_t first) const;

  /// The trainable parameters with their names: <prefix>mlp.<l>.weight, <prefix>mlp.<l>.bias,
  /// <prefix>categorical.<name>, <prefix>bags.<name>.
  void parameters(const std::string& prefix,
                  std::vector<std::pair<std::string, Parameter*>>& out);

 private:
  const index_t* bag_rows(const FeaturesView& x, std::size_t i, const index_t* rows,
                          const index_t* positions) const;
  std::string label(const char* kind, const std::string& name) const;

  FeatureSchema schema_;
  Pooling pooling_ = Pooling::kMean;
  std::string what_;
  Mlp mlp_;
  std::vector<Parameter> categorical_tables_;
  std::vector<Parameter> bag_tables_;
  std::vector<index_t> offsets_cat_, offsets_bag_;  // column offsets in the tower input

  // Per-batch scratch, reused.
  Mlp::Workspace ws_;
  std::vector<RowMatrixXf> dW_, db_;
  std::vector<RowGradient> cat_grads_;
  std::vector<BagGradient> bag_grads_;
};

}  // namespace fastsoftmax
