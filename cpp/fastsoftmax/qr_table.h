#pragma once
// Compressed item tables that keep every item distinct (plain hashing would merge items in the
// output layer):
// * Quotient-remainder (Shi et al. 2020, "Compositional Embeddings Using Complementary
//   Partitions"): V_j = Q[j / b] * R[j % b] element-wise, with Q (ceil(n / b) x d) and R (b x d):
//   (n / b + b) d parameters instead of n d; no two items share both rows.
// * Hybrid (Zhang et al. 2020, frequency-based mixed embeddings): the K `dedicated` items (the
//   most frequent in training) keep a row of their own in D (K x d); the others use QR.
//
// The table is never materialised whole during training: materialize() computes the rows a loss
// reads, backward() turns their gradient dL/dV_j into row-sparse gradients of Q, R and D
// (dQ[j / b] += g_j * R[j % b], dR[j % b] += g_j * Q[j / b], dD[slot] += g_j), each row's
// contributions summed in the order of the given rows: bit-identical for any thread count.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"

namespace fastsoftmax {

class QrItemTable {
 public:
  QrItemTable() = default;
  /// n_items items of dim columns; `buckets` b in [1, n_items] (R's rows); `dedicated`: sorted
  /// unique ids in [0, n_items) with their own rows (empty: pure QR). Throws
  /// std::invalid_argument naming item_buckets / item_dedicated otherwise.
  QrItemTable(index_t n_items, index_t dim, index_t buckets, std::vector<index_t> dedicated);

  index_t buckets() const { return buckets_; }

  /// Q and R uniform with standard deviation dim^(-1/4) each (so a product row has the item
  /// table's 1 / sqrt(dim)), D with 1 / sqrt(dim); one random stream each from `stream` on.
  void initialize(std::uint64_t seed, std::uint64_t& stream);

  /// out[c] = V_{rows[c]} for c < C (out: C x dim, row-major).
  void materialize(const index_t* rows, index_t C, float* out, int num_threads) const;

  /// The gradients of Q, R and D from item gradients: row i of grad (k x dim, rows `dim`
  /// floats apart) is dL/dV_{ids[i]} (ids unique). Kept until the next backward.
  void backward(const index_t* ids, index_t k, const float* grad, int num_threads);

  /// The optimiser steps of the last backward's gradients.
  void add_steps(const OptimizerConfig& opt, std::vector<UpdateJob>& jobs);

  /// Adds the last backward's gradients to out[first], out[first + 1], ... (parameters order).
  void add_gradients(std::vector<RowMatrixXf>& out, std::size_t first, int num_threads);

  /// item_qr.quotient, item_qr.remainder, then item_qr.dedicated (hybrid only).
  void parameters(std::vector<std::pair<std::string, Parameter*>>& out);

 private:
  index_t n_items_ = 0, dim_ = 0, buckets_ = 1;
  std::vector<std::int32_t> slot_;  // hybrid: row of item j in D, -1 for QR items (else empty)
  Parameter quotient_, remainder_, dedicated_;
  // Last backward: per gradient row, the products g * R and g * Q, and the row gradients.
  RowMatrixXf grad_q_, grad_r_;
  RowGradient dq_, dr_, dd_;
};

}  // namespace fastsoftmax
