// C++ benchmark of the top-k kernel: wall time and GFlop/s of the score computation
// (2 * B * n * d flops) for one call, best of `reps`.
//   cmake -S . -B build-bench -DFASTSOFTMAX_BUILD_BENCHMARKS=ON -DFASTSOFTMAX_BUILD_PYTHON=OFF
//   cmake --build build-bench && ./build-bench/bench_topk [n=1000000] [B=1024] [d=64] [k=10]
//                                                          [threads=0] [reps=5]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "fastsoftmax/topk.h"

int main(int argc, char** argv) {
  const long long n = argc > 1 ? std::atoll(argv[1]) : 1000000LL;
  const long long B = argc > 2 ? std::atoll(argv[2]) : 1024LL;
  const long long d = argc > 3 ? std::atoll(argv[3]) : 64LL;
  const long long k = argc > 4 ? std::atoll(argv[4]) : 10LL;
  const int threads = argc > 5 ? std::atoi(argv[5]) : 0;
  const int reps = argc > 6 ? std::atoi(argv[6]) : 5;
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> items(n * d), queries(B * d);
  for (auto& v : items) v = normal(gen);
  for (auto& v : queries) v = normal(gen);
  std::vector<std::int64_t> ids(B * k);
  std::vector<float> scores(B * k);
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto a = std::chrono::steady_clock::now();
    fastsoftmax::topk(queries.data(), B, items.data(), n, d, k, ids.data(), scores.data(),
                      threads);
    const auto b = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(b - a).count());
  }
  std::printf("n=%lld B=%lld d=%lld k=%lld threads=%d avx2=%d: %.3f ms, %.1f GFlop/s\n", n, B, d,
              k, threads, fastsoftmax::topk_uses_avx2() ? 1 : 0, best * 1e3,
              2.0 * B * n * d / best / 1e9);
  return 0;
}
