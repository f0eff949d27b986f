// C++ benchmark of the alias sampler: build time and draws/s for n = 1e5, 1e6, 1e7.
//   cmake -S . -B build -DFASTSOFTMAX_BUILD_BENCHMARKS=ON && cmake --build build
//   ./build/bench_sampler [draws=10000000] [threads=1]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "fastsoftmax/alias_sampler.h"

using fastsoftmax::AliasSampler;

int main(int argc, char** argv) {
  const long long draws = argc > 1 ? std::atoll(argv[1]) : 10000000LL;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  std::vector<std::int64_t> out(draws);
  std::printf("%10s %8s %12s %14s\n", "n", "threads", "build_ms", "Mdraws/s");
  for (long long n : {100000LL, 1000000LL, 10000000LL}) {
    std::vector<double> w(n);
    for (long long i = 0; i < n; ++i) w[i] = 1.0 / (1.0 + static_cast<double>((i * 7919) % n));
    auto t0 = std::chrono::steady_clock::now();
    AliasSampler sampler(w.data(), n);
    auto t1 = std::chrono::steady_clock::now();
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      auto a = std::chrono::steady_clock::now();
      sampler.sample(out.data(), draws, 0, threads);
      auto b = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(b - a).count());
    }
    long long checksum = 0;
    for (long long i = 0; i < draws; i += 4096) checksum += out[i];
    std::printf("%10lld %8d %12.2f %14.1f   (checksum %lld)\n", n, threads,
                std::chrono::duration<double, std::milli>(t1 - t0).count(), draws / best / 1e6,
                checksum);
  }
  return 0;
}
