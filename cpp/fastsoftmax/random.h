#pragma once
// Random streams that do not depend on the thread count.
//
// Every unit of parallel work (a chunk of draws, a batch, a row block) gets its own stream, keyed by
// (seed, stream id): Rng(seed, stream) is a xoshiro256** generator whose state is derived from both
// keys through SplitMix64. Which thread runs a chunk therefore never changes the numbers it sees.

#include <cstdint>

namespace fastsoftmax {

/// SplitMix64 finaliser: a bijective mix of a 64-bit word.
inline std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// xoshiro256** keyed by (seed, stream). Small (32 bytes), no heap, cheap to construct per chunk.
class Rng {
 public:
  Rng(std::uint64_t seed, std::uint64_t stream) {
    std::uint64_t x = mix64(seed) ^ mix64(stream ^ 0xD1B54A32D192ED03ULL);
    for (auto& word : s_) {
      x += 0x9E3779B97F4A7C15ULL;
      word = mix64(x);
    }
  }

  /// Next uniformly distributed 64-bit word.
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform integer in [0, n) for n >= 1 (Lemire's multiply-shift with rejection: exact).
  std::uint64_t uniform_int(std::uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
    auto low = static_cast<std::uint64_t>(m);
    if (low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(next()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Uniform float in [0, 1) with 24 random bits.
  float uniform_float() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

}  // namespace fastsoftmax
