#pragma once
// Shared types and argument-check helpers of the fastsoftmax core. No Python in here.
//
// Errors: a caller mistake throws std::invalid_argument (ValueError in Python) or std::out_of_range
// (IndexError) whose message names the argument, what was expected and what was given; a numerical
// failure throws std::runtime_error with a hint.

#include <Eigen/Core>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastsoftmax {

using index_t = std::int64_t;

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixXf = RowMatrix<float>;
using RowMatrixXd = RowMatrix<double>;
using MapRowMatrixXf = Eigen::Map<RowMatrixXf>;
using ConstMapRowMatrixXf = Eigen::Map<const RowMatrixXf>;

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, T&& first, Rest&&... rest) {
  os << std::forward<T>(first);
  append(os, std::forward<Rest>(rest)...);
}
}  // namespace detail

/// Concatenates all arguments with operator<< into one string.
template <class... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  detail::append(os, std::forward<Args>(args)...);
  return os.str();
}

/// Throws std::invalid_argument (-> ValueError) with the concatenated message.
template <class... Args>
[[noreturn]] void throw_invalid(Args&&... args) {
  throw std::invalid_argument(str_cat(std::forward<Args>(args)...));
}

/// Throws std::out_of_range (-> IndexError) with the concatenated message.
template <class... Args>
[[noreturn]] void throw_out_of_range(Args&&... args) {
  throw std::out_of_range(str_cat(std::forward<Args>(args)...));
}

/// Raised when a long computation notices a pending interrupt (Ctrl-C); the binding layer turns it
/// into KeyboardInterrupt.
class Interrupted : public std::runtime_error {
 public:
  Interrupted() : std::runtime_error("interrupted") {}
};

/// Mass = sum_k y_bk of row b of a target CSR (1 for a target distribution).
inline float row_mass(const index_t* indptr, const float* weights, index_t b) {
  double m = 0.0;
  for (index_t k = indptr[b]; k < indptr[b + 1]; ++k) m += weights[k];
  return static_cast<float>(m);
}

}  // namespace fastsoftmax
