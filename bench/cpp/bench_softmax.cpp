// Times the full-softmax loss stage (forward_backward) and its pieces on random data.
//   ./build/bench_softmax [n_items=100000] [threads=2] [batch=256] [dim=64] [iters=5]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "fastsoftmax/softmax_loss.h"
#include "fastsoftmax/thread_pool.h"

using namespace fastsoftmax;
using Clock = std::chrono::steady_clock;

template <class F>
double best_seconds(int iters, F&& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

int main(int argc, char** argv) {
  const index_t n = argc > 1 ? std::atoll(argv[1]) : 100000;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const index_t B = argc > 3 ? std::atoll(argv[3]) : 256;
  const index_t d = argc > 4 ? std::atoll(argv[4]) : 64;
  const int iters = argc > 5 ? std::atoi(argv[5]) : 5;
  std::mt19937 gen(0);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  RowMatrixXf psi(B, d), V(n, d);
  for (index_t i = 0; i < psi.size(); ++i) psi.data()[i] = normal(gen);
  for (index_t i = 0; i < V.size(); ++i) V.data()[i] = normal(gen);
  std::vector<index_t> indptr(B + 1), indices(B);
  std::vector<float> weights(B, 1.0f);
  for (index_t b = 0; b < B; ++b) {
    indptr[b + 1] = b + 1;
    indices[b] = static_cast<index_t>(gen() % n);
  }
  TargetsView t{B, indptr.data(), indices.data(), weights.data()};
  ItemParamsView items{n, d, V.data(), nullptr};
  RowMatrixXf dpsi(B, d);
  MapRowMatrixXf dpsi_map(dpsi.data(), B, d);
  ConstMapRowMatrixXf psi_map(psi.data(), B, d);
  ItemGradient g;
  const double flops = 2.0 * B * n * d;
  for (bool portable : {false, true})
  for (std::size_t budget : {std::size_t{512} << 20, std::size_t{0}}) {
    FullSoftmaxLoss loss(budget, portable);
    LossContext ctx{0, 0, threads, 1.0f / B};
    const double fwd = best_seconds(iters, [&] {
      loss.forward_backward(psi_map, items, t, ctx, nullptr, nullptr);
    });
    const double fb = best_seconds(iters, [&] {
      loss.forward_backward(psi_map, items, t, ctx, &dpsi_map, &g);
    });
    std::printf("%s buffer=%s forward %.1f ms (%.1f GFLOP/s)  forward_backward %.1f ms (%.1f GFLOP/s for %s products)\n",
                portable ? "eigen" : "simd ", budget ? "yes" : "no", fwd * 1e3, flops / fwd / 1e9, fb * 1e3,
                (budget ? 3 : 4) * flops / fb / 1e9, budget ? "3" : "4");
  }
  // Plain Eigen GEMM on one thread, same shapes, as a reference.
  RowMatrixXf Z(B, n);
  const double gemm = best_seconds(iters, [&] { Z.noalias() = psi * V.transpose(); });
  std::printf("Eigen psi*V^T single call, 1 thread: %.1f ms (%.1f GFLOP/s)\n", gemm * 1e3,
              flops / gemm / 1e9);
  RowMatrixXf blk(B, 256);
  const double gemm_blk = best_seconds(iters, [&] {
    for (index_t j0 = 0; j0 + 256 <= n; j0 += 256) blk.noalias() = psi * V.middleRows(j0, 256).transpose();
  });
  std::printf("Eigen psi*V_blk^T (256-item blocks), 1 thread: %.1f GFLOP/s\n",
              2.0 * B * (n / 256 * 256) * d / gemm_blk / 1e9);
  const double ex = best_seconds(iters, [&] { blk.array() = blk.array().exp(); });
  std::printf("exp on B x 256: %.2f ns/elem\n", ex / blk.size() * 1e9);
  return 0;
}
