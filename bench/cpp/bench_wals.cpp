// Time of one WALS half-sweep (fastsoftmax::solve_rows) on a synthetic power-law matrix, both
// sides (rows: queries solved against the items; cols: items against the queries).
//
//   ./build/bench_wals [n_rows=200000] [n_cols=50000] [nnz=5000000] [dim=64] [threads=1]
//                      [solver=cg|cholesky] [repeat=3]
//
// With solver=cholesky it first times the d x d factorisation alone: the AVX2 kernel
// (simd::cholesky_lower, used when d % 4 == 0) against Eigen's LLT on the same SPD matrices.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "fastsoftmax/alias_sampler.h"
#include "fastsoftmax/random.h"
#include "fastsoftmax/simd_kernels.h"
#include "fastsoftmax/wals.h"

using namespace fastsoftmax;

namespace {

struct Csr {
  index_t n_rows = 0, n_cols = 0;
  std::vector<index_t> indptr, indices;
  std::vector<float> targets, weights;
  CsrView view() const {
    CsrView v;
    v.n_rows = n_rows;
    v.n_cols = n_cols;
    v.indptr = indptr.data();
    v.indices = indices.data();
    v.targets = targets.data();
    v.weights = weights.data();
    return v;
  }
};

std::vector<std::int64_t> power_law_ids(index_t n, double exponent, index_t size, std::uint64_t seed) {
  std::vector<double> w(n);
  for (index_t i = 0; i < n; ++i) w[i] = 1.0 / std::pow(static_cast<double>(i + 1), exponent);
  AliasSampler sampler(w.data(), n);
  std::vector<std::int64_t> ids(size);
  sampler.sample(ids.data(), size, seed, 0);
  // Shuffle the ids so that popular rows are spread out.
  std::vector<std::int64_t> perm(n);
  for (index_t i = 0; i < n; ++i) perm[i] = i;
  Rng rng(seed, 99);
  for (index_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[rng.uniform_int(i + 1)]);
  for (auto& id : ids) id = perm[id];
  return ids;
}

// Counts of (row, col) draws as a CSR matrix (duplicates merged), and its transpose.
void build(index_t n_rows, index_t n_cols, index_t draws, Csr& rows, Csr& cols) {
  const auto r = power_law_ids(n_rows, 0.5, draws, 1);
  const auto c = power_law_ids(n_cols, 0.8, draws, 2);
  std::vector<std::pair<std::int64_t, std::int64_t>> pairs(draws);
  for (index_t k = 0; k < draws; ++k) pairs[k] = {r[k], c[k]};
  std::sort(pairs.begin(), pairs.end());
  auto fill = [](index_t n, index_t m, const std::vector<std::pair<std::int64_t, std::int64_t>>& p,
                 Csr& out) {
    out.n_rows = n;
    out.n_cols = m;
    out.indptr.assign(n + 1, 0);
    for (std::size_t k = 0; k < p.size();) {
      std::size_t e = k;
      while (e < p.size() && p[e] == p[k]) ++e;
      out.indices.push_back(p[k].second);
      out.targets.push_back(1.0f);
      out.weights.push_back(10.0f * static_cast<float>(e - k));
      ++out.indptr[p[k].first + 1];
      k = e;
    }
    for (index_t i = 0; i < n; ++i) out.indptr[i + 1] += out.indptr[i];
  };
  fill(n_rows, n_cols, pairs, rows);
  for (auto& p : pairs) std::swap(p.first, p.second);
  std::sort(pairs.begin(), pairs.end());
  fill(n_cols, n_rows, pairs, cols);
}

// CPU time of the whole process (all threads), robust to other processes sharing the cores.
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Microseconds per factorisation of a dim x dim SPD matrix (copy included), best of 20 x 2000:
// Eigen's LLT and the AVX2 kernel.
void factor_benchmark(index_t dim) {
  Rng rng(3, 0);
  Eigen::MatrixXd m(dim, 3 * dim);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = rng.uniform_float() - 0.5;
  const Eigen::MatrixXd spd = m * m.transpose() / static_cast<double>(dim) +
                              0.05 * Eigen::MatrixXd::Identity(dim, dim);
  Eigen::MatrixXd work(dim, dim);
  double sink = 0.0;
  auto time = [&](auto&& factor) {
    double best = 1e30;
    for (int r = 0; r < 20; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 2000; ++i) {
        work = spd;
        factor();
        sink += work(dim - 1, dim - 1);
      }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                    .count() / 2000);
    }
    return best * 1e6;
  };
  const double eigen_us = time([&] { Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(work); });
  std::printf("factorisation of a %lld x %lld SPD matrix: Eigen LLT %.2f us",
              static_cast<long long>(dim), static_cast<long long>(dim), eigen_us);
  if (simd::avx2_fma_available() && dim % 4 == 0) {
    const double kernel_us = time([&] { simd::cholesky_lower(work.data(), dim); });
    std::printf(", AVX2 kernel %.2f us (%.2fx)", kernel_us, eigen_us / kernel_us);
  }
  std::printf("%s\n", sink == 0.123 ? " " : "");
}

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, long long def) { return argc > i ? std::atoll(argv[i]) : def; };
  const index_t n_rows = arg(1, 200000), n_cols = arg(2, 50000), nnz = arg(3, 5000000);
  const index_t dim = arg(4, 64);
  const int threads = static_cast<int>(arg(5, 1));
  const std::string solver = argc > 6 ? argv[6] : "cg";
  const int repeat = static_cast<int>(arg(7, 3));

  if (solver == "cholesky") factor_benchmark(dim);
  Csr rows, cols;
  build(n_rows, n_cols, static_cast<index_t>(nnz * 1.08), rows, cols);
  std::printf("%lld x %lld, nnz %lld, dim %lld, threads %d, solver %s\n",
              static_cast<long long>(n_rows), static_cast<long long>(n_cols),
              static_cast<long long>(rows.indptr.back()), static_cast<long long>(dim), threads,
              solver.c_str());
  Rng rng(0, 0);
  std::vector<float> u(n_rows * dim), v(n_cols * dim);
  for (auto& x : u) x = 0.1f * (rng.uniform_float() - 0.5f);
  for (auto& x : v) x = 0.1f * (rng.uniform_float() - 0.5f);
  WalsOptions options;
  options.unobserved_weight = 1.0;
  options.regularization = 0.05;
  options.solver = solver == "cholesky" ? WalsSolver::kCholesky : WalsSolver::kCg;
  options.num_threads = threads;
  std::vector<double> gram(dim * dim);
  for (const char* side : {"rows", "cols"}) {
    const bool is_rows = side[0] == 'r';
    const Csr& a = is_rows ? rows : cols;
    const std::vector<float>& fixed = is_rows ? v : u;
    std::vector<float>& x = is_rows ? u : v;
    gramian(fixed.data(), a.n_cols, dim, gram.data(), threads);
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_seconds();
      solve_rows(a.view(), fixed.data(), gram.data(), dim, options, x.data(), nullptr);
      best_cpu = std::min(best_cpu, cpu_seconds() - c0);
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    std::printf("  %s: %.1f ms per half-sweep (%.1f ns per entry), CPU time %.1f ms\n", side,
                best * 1e3, best * 1e9 / static_cast<double>(a.indptr.back()), best_cpu * 1e3);
  }
  return 0;
}
