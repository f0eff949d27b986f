// Sampled-softmax kernel timing: ./build/bench_sampled [n_items] [num_negatives] [threads]
// B = 256, d = 64, one positive per row, shared uniform negatives (the canonical configuration).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "fastsoftmax/random.h"
#include "fastsoftmax/sampled_softmax.h"

using namespace fastsoftmax;

int main(int argc, char** argv) {
  const index_t n = argc > 1 ? std::atoll(argv[1]) : 1000000;
  const index_t m = argc > 2 ? std::atoll(argv[2]) : 256;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  const index_t B = 256, d = 64;
  Rng rng(0, 0);
  std::vector<float> psi(B * d), V(n * d);
  for (auto& x : psi) x = 0.1f * (rng.uniform_float() - 0.5f);
  for (auto& x : V) x = 0.1f * (rng.uniform_float() - 0.5f);
  std::vector<index_t> indptr(B + 1), indices(B);
  std::vector<float> w(B, 1.0f);
  for (index_t b = 0; b <= B; ++b) indptr[b] = b;
  for (auto& j : indices) j = static_cast<index_t>(rng.uniform_int(n));
  NegativeSamplerOptions so;
  so.num_negatives = m;
  const char* only = argc > 4 ? argv[4] : "";
  for (const char* kind : {"uniform", "score-sir"}) {
    if (only[0] && only[0] != kind[0]) continue;
    so.kind = kind[0] == 'u' ? SamplerKind::kUniform : SamplerKind::kScore;
    SampledSoftmax loss(n, so, nullptr, SampledSoftmaxOptions{});
    std::vector<float> dpsi(B * d);
    std::vector<index_t> rows;
    RowMatrixXf grad;
    std::vector<float> bgrad;
    const int reps = 200;
    double total = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) {
      total += loss.forward_backward(psi.data(), B, d, V.data(), nullptr, indptr.data(),
                                     indices.data(), w.data(), r, 1.0f / B, threads, dpsi.data(),
                                     &rows, &grad, &bgrad);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s n=%lld m=%lld threads=%d: %.3f ms/batch (loss %.3f)\n", kind, (long long)n,
                (long long)m, threads, 1e3 * s / reps, total / reps / B);
  }
}
