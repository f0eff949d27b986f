#pragma once
// Walker/Vose alias table: O(n) construction, O(1) draws from a fixed discrete distribution.
//
// Each column j stores (keep probability p_j, alias a_j) in one 8-byte cell, so a draw touches one
// cache line: one 64-bit random word u gives the column floor(u * n / 2^64) and, from the
// fractional part of u * n / 2^64, a coin that keeps j with probability p_j or returns a_j.
// Items with zero weight have p_j = 0 and are never anyone's alias: they are never drawn.

#include <cstdint>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/random.h"

namespace fastsoftmax {

class AliasSampler {
 public:
  struct Cell {
    float keep;           // probability of returning the column itself
    std::int32_t alias;   // returned otherwise
  };

  /// Builds the table from n >= 1 finite, non-negative weights with a positive sum.
  /// Throws std::invalid_argument naming `weights` otherwise. n must fit in int32.
  AliasSampler(const double* weights, index_t n);

  index_t size() const { return static_cast<index_t>(cells_.size()); }
  const std::vector<Cell>& cells() const { return cells_; }
  /// Normalised weights (the distribution the table samples), float64.
  const std::vector<double>& probabilities() const { return probabilities_; }

  /// One draw from the 64-bit random word `u`.
  std::int64_t draw(std::uint64_t u) const {
    const unsigned __int128 m = static_cast<unsigned __int128>(u) * cells_.size();
    const auto column = static_cast<std::size_t>(m >> 64);
    const auto coin = static_cast<float>(static_cast<std::uint64_t>(m) >> 40) * 0x1.0p-24f;
    const Cell c = cells_[column];
    // Branch-free select: the coin is unpredictable, a branch would mispredict half the time.
    const std::int64_t keep_mask = -static_cast<std::int64_t>(coin < c.keep);
    return (static_cast<std::int64_t>(column) & keep_mask) |
           (static_cast<std::int64_t>(c.alias) & ~keep_mask);
  }

  std::int64_t draw(Rng& rng) const { return draw(rng.next()); }

  /// Fills out[0..size) with draws. Draws come in fixed chunks of kChunk, chunk c using
  /// Rng(seed, c): the output depends on the seed only, never on num_threads.
  void sample(std::int64_t* out, index_t size, std::uint64_t seed, int num_threads) const;

  static constexpr index_t kChunk = 1 << 16;

 private:
  std::vector<Cell> cells_;
  std::vector<double> probabilities_;
};

}  // namespace fastsoftmax
