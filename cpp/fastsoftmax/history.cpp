#include "fastsoftmax/history.h"

#include <algorithm>
#include <cmath>

#include "fastsoftmax/random.h"

namespace fastsoftmax {
namespace {
constexpr std::uint64_t kHistoryStream = 0x48495354ULL << 32;  // "HIST"
}  // namespace

HistoryTarget parse_history_target(const std::string& name) {
  if (name == "all") return HistoryTarget::kAll;
  if (name == "dropped") return HistoryTarget::kDropped;
  throw_invalid("history_target: expected 'all' or 'dropped', got '", name, "'");
}

std::uint64_t HistoryCorruption::stream(std::int64_t epoch, index_t row) {
  const auto e = static_cast<std::uint64_t>(epoch), r = static_cast<std::uint64_t>(row);
  return kHistoryStream ^ mix64((e << 40) ^ r);
}

void HistoryCorruption::draw(std::uint64_t seed, std::int64_t epoch, index_t row, float dropout,
                             index_t n, std::uint8_t* keep) {
  // Entry k is dropped when its 24-bit uniform u_k < p (probability p rounded to 2^-24).
  const auto threshold = static_cast<std::uint64_t>(std::ceil(double{dropout} * 0x1.0p24));
  Rng rng(seed, stream(epoch, row));
  for (index_t k = 0; k < n; ++k) keep[k] = (rng.next() >> 40) >= threshold;
}

void HistoryCorruption::keep_entries(const HistoryConfig& config, Pooling pooling,
                                     const BagsView& h, index_t r, std::uint64_t seed,
                                     std::int64_t epoch) {
  const index_t begin = h.indptr[r], n = h.indptr[r + 1] - begin;
  keep_.resize(static_cast<std::size_t>(std::max<index_t>(n, 1)));
  draw(seed, epoch, r, config.dropout, n, keep_.data());
  // Sum pooling has no normaliser: scale so that the expected pooled input is the full one's.
  const float scale = pooling == Pooling::kSum ? 1.0f / (1.0f - config.dropout) : 1.0f;
  const bool mark = config.target == HistoryTarget::kDropped;
  for (index_t k = 0; k < n; ++k) {
    if (!keep_[static_cast<std::size_t>(k)]) continue;
    const index_t id = h.indices[begin + k];
    indices_.push_back(id);
    weights_.push_back(scale * (h.weights ? h.weights[begin + k] : 1.0f));
    if (!mark) continue;
    if (static_cast<std::size_t>(id) >= stamp_.size()) stamp_.resize(id + 1, 0);
    stamp_[static_cast<std::size_t>(id)] = current_;
  }
}

index_t HistoryCorruption::dropped_targets(const TargetsView& t, index_t r) {
  const std::size_t start = t_indices_.size();
  double sum = 0.0;
  for (index_t k = t.indptr[r]; k < t.indptr[r + 1]; ++k) {
    const auto j = static_cast<std::size_t>(t.indices[k]);
    const bool kept = j < stamp_.size() && stamp_[j] == current_;
    if (kept || !(t.weights[k] > 0.0f)) continue;
    t_indices_.push_back(t.indices[k]);
    t_weights_.push_back(t.weights[k]);
    sum += t.weights[k];
  }
  const double scale = (t.row_weights ? t.row_weights[r] : 1.0) / sum;
  for (std::size_t k = start; k < t_weights_.size(); ++k) {
    t_weights_[k] = static_cast<float>(t_weights_[k] * scale);
  }
  return static_cast<index_t>(t_indices_.size() - start);
}

index_t HistoryCorruption::corrupt(const HistoryConfig& config, Pooling pooling,
                                   const BagsView& history, const TargetsView& targets,
                                   const index_t* rows, index_t B, std::uint64_t seed,
                                   std::int64_t epoch) {
  const bool dropped = config.target == HistoryTarget::kDropped;
  rows_.clear();
  indptr_.assign(1, 0);
  indices_.clear();
  weights_.clear();
  t_indptr_.assign(1, 0);
  t_indices_.clear();
  t_weights_.clear();
  for (index_t b = 0; b < B; ++b) {
    const index_t r = rows[b];
    if (++current_ == 0) {  // stamps wrapped around: forget every old mark
      std::fill(stamp_.begin(), stamp_.end(), 0u);
      current_ = 1;
    }
    const std::size_t bag_size = indices_.size();
    keep_entries(config, pooling, history, r, seed, epoch);
    if (dropped && dropped_targets(targets, r) == 0) {
      indices_.resize(bag_size);  // the row sits this step out
      weights_.resize(bag_size);
      continue;
    }
    rows_.push_back(r);
    indptr_.push_back(static_cast<index_t>(indices_.size()));
    if (dropped) t_indptr_.push_back(static_cast<index_t>(t_indices_.size()));
  }
  return static_cast<index_t>(rows_.size());
}

}  // namespace fastsoftmax
