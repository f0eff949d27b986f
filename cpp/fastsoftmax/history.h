#pragma once
// History features: training-time corruption of the bag that holds a query's past items.
//
// When a query's history bag holds the very items it is trained to predict, the network lowers
// the loss by copying its input and learns little that helps to recommend unseen items. The
// remedy (denoising, as Mult-DAE, Liang et al. 2018): at every optimiser step each history entry
// of each batch row is dropped independently with probability p, and the bag is pooled over the
// kept entries (mean and sqrt-n pooling renormalise over them by definition; sum pooling scales
// the kept weights by 1 / (1 - p), so that the expected input equals the full history's). The
// targets are either all the row's positives (HistoryTarget::kAll) or only those that are not
// among the kept history items (kDropped: "predict what was hidden"; a row left without a target
// sits that step out). At prediction time the whole history is the input.
//
// Determinism: the draws of data row r in epoch e come from Rng(seed, stream(e, r)); a row is in
// exactly one batch per epoch, so every step has fresh draws, and neither the thread count nor
// the row's position in its batch changes them.

#include <cstdint>
#include <string>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"
#include "fastsoftmax/softmax_loss.h"

namespace fastsoftmax {

enum class HistoryTarget { kAll, kDropped };

/// Parses "all" | "dropped"; throws std::invalid_argument naming `history_target` otherwise.
HistoryTarget parse_history_target(const std::string& name);

struct HistoryConfig {
  index_t bag = -1;      // index of the history among the bag features; -1: no history feature
  float dropout = 0.0f;  // probability p in [0, 1) of dropping an entry at a step
  HistoryTarget target = HistoryTarget::kAll;
};

/// The corrupted history (and, for kDropped, the targets) of one batch, rebuilt every step.
class HistoryCorruption {
 public:
  /// Stream of the draws of data row `row` in epoch `epoch` (distinct for distinct pairs with
  /// row < 2^40 and epoch < 2^24).
  static std::uint64_t stream(std::int64_t epoch, index_t row);

  /// Whether the entries of data row `row` survive epoch `epoch`: keep[k] for the row's entries
  /// k = 0 .. n-1 in CSR order (the single definition of the draws).
  static void draw(std::uint64_t seed, std::int64_t epoch, index_t row, float dropout, index_t n,
                   std::uint8_t* keep);

  /// Corrupts the batch rows[0..B): the kept entries become bag() (CSR indexed by position in the
  /// batch). With kDropped, also builds targets() (normalised per row) and drops the rows left
  /// without a target. Returns the batch size B' <= B that remains; rows() are its data rows.
  index_t corrupt(const HistoryConfig& config, Pooling pooling, const BagsView& history,
                  const TargetsView& targets, const index_t* rows, index_t B, std::uint64_t seed,
                  std::int64_t epoch);

  const index_t* rows() const { return rows_.data(); }
  BagsView bag() const { return BagsView{indptr_.data(), indices_.data(), weights_.data()}; }
  TargetsView targets() const {
    return TargetsView{static_cast<index_t>(rows_.size()), t_indptr_.data(), t_indices_.data(),
                       t_weights_.data()};
  }

 private:
  // Appends row r's kept entries to the bag and marks their ids in stamp_.
  void keep_entries(const HistoryConfig& config, Pooling pooling, const BagsView& history,
                    index_t r, std::uint64_t seed, std::int64_t epoch);
  // Appends row r's targets that are not marked (normalised); returns how many.
  index_t dropped_targets(const TargetsView& targets, index_t r);

  std::vector<index_t> rows_;
  std::vector<index_t> indptr_, indices_;
  std::vector<float> weights_;
  std::vector<index_t> t_indptr_, t_indices_;
  std::vector<float> t_weights_;
  std::vector<std::uint8_t> keep_;
  std::vector<std::uint32_t> stamp_;  // per history id: the row stamp that last kept it
  std::uint32_t current_ = 0;
};

}  // namespace fastsoftmax
