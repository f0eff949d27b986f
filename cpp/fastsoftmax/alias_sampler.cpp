#include "fastsoftmax/alias_sampler.h"

#include <cmath>
#include <limits>

#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {

AliasSampler::AliasSampler(const double* weights, index_t n) {
  if (n <= 0) throw_invalid("weights: expected at least one weight, got an empty array");
  if (n > std::numeric_limits<std::int32_t>::max()) {
    throw_invalid("weights: at most 2^31 - 1 items are supported, got ", n);
  }
  double total = 0.0;
  for (index_t i = 0; i < n; ++i) {
    const double w = weights[i];
    if (!std::isfinite(w)) throw_invalid("weights: expected finite values, got ", w, " at index ", i);
    if (w < 0) throw_invalid("weights: expected non-negative values, got ", w, " at index ", i);
    total += w;
  }
  if (!(total > 0) || !std::isfinite(total)) {
    throw_invalid("weights: expected a positive, finite sum, got ", total);
  }

  probabilities_.resize(n);
  std::vector<double> scaled(n);
  for (index_t i = 0; i < n; ++i) {
    probabilities_[i] = weights[i] / total;
    scaled[i] = probabilities_[i] * static_cast<double>(n);
  }

  // Vose: two worklists used as stacks, smalls (< 1) and larges (>= 1), in index order.
  std::vector<std::int32_t> small, large;
  small.reserve(n);
  large.reserve(n);
  for (index_t i = n - 1; i >= 0; --i) {
    (scaled[i] < 1.0 ? small : large).push_back(static_cast<std::int32_t>(i));
  }
  cells_.assign(n, Cell{1.0f, 0});
  for (index_t i = 0; i < n; ++i) cells_[i].alias = static_cast<std::int32_t>(i);
  while (!small.empty() && !large.empty()) {
    const std::int32_t s = small.back();
    small.pop_back();
    const std::int32_t l = large.back();
    cells_[s].keep = static_cast<float>(scaled[s]);
    cells_[s].alias = l;
    scaled[l] -= 1.0 - scaled[s];
    if (scaled[l] < 1.0) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // Leftovers differ from 1 only by rounding. A zero-weight item can never be among them (the
  // others would have to sum to more than their count), but keep the guarantee explicit.
  std::int32_t some_positive = 0;
  while (weights[some_positive] <= 0) ++some_positive;
  for (auto* rest : {&small, &large}) {
    for (const std::int32_t i : *rest) {
      cells_[i].keep = weights[i] > 0 ? 1.0f : 0.0f;
      cells_[i].alias = weights[i] > 0 ? i : some_positive;
    }
  }
}

void AliasSampler::sample(std::int64_t* out, index_t size, std::uint64_t seed,
                          int num_threads) const {
  if (size < 0) throw_invalid("size: expected a non-negative integer, got ", size);
  const index_t n_chunks = (size + kChunk - 1) / kChunk;
  parallel_for(n_chunks, num_threads, [&](std::int64_t chunk, int) {
    Rng rng(seed, static_cast<std::uint64_t>(chunk));
    const index_t begin = chunk * kChunk;
    const index_t end = std::min(size, begin + kChunk);
    // Groups of kGroup: draw the words and prefetch their cells first, so that the cache misses
    // of a large table overlap instead of queueing behind each other.
    constexpr index_t kGroup = 16;
    std::uint64_t words[kGroup];
    const std::uint64_t n = cells_.size();
    index_t i = begin;
    for (; i + kGroup <= end; i += kGroup) {
      for (index_t g = 0; g < kGroup; ++g) {
        words[g] = rng.next();
        const auto column = static_cast<std::size_t>((static_cast<unsigned __int128>(words[g]) * n) >> 64);
        __builtin_prefetch(&cells_[column]);
      }
      for (index_t g = 0; g < kGroup; ++g) out[i + g] = draw(words[g]);
    }
    for (; i < end; ++i) out[i] = draw(rng.next());
  });
}

}  // namespace fastsoftmax
