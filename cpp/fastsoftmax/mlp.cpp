#include "fastsoftmax/mlp.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "fastsoftmax/simd_kernels.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {
constexpr index_t kColChunk = 64;  // rows and columns of a weight-gradient tile
}  // namespace

Mlp::Mlp(const std::vector<index_t>& sizes) : sizes_(sizes) {
  if (sizes.size() < 2) throw_invalid("sizes: expected at least 2 layer sizes, got ", sizes.size());
  for (const index_t s : sizes) {
    if (s < 1) throw_invalid("sizes: expected every layer size >= 1, got ", s);
    max_width_ = std::max(max_width_, s);
  }
  for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
    weights.emplace_back(sizes[l], sizes[l + 1]);
    biases.emplace_back(1, sizes[l + 1]);
  }
}

void Mlp::Workspace::resize(const Mlp& mlp, index_t B) {
  const auto& s = mlp.sizes();
  acts.resize(s.size());
  grads.resize(s.size());
  for (std::size_t l = 0; l < s.size(); ++l) {
    if (acts[l].rows() != B || acts[l].cols() != s[l]) acts[l].resize(B, s[l]);
    if (grads[l].rows() != B || grads[l].cols() != s[l]) grads[l].resize(B, s[l]);
  }
  rows = B;
}

Mlp::InputGradColumns Mlp::input_grad_columns(index_t l, index_t input_grad_from) const {
  const index_t first = l == 0 ? std::min(input_grad_from, sizes_[0]) : 0;
  const index_t cols = sizes_[static_cast<std::size_t>(l)] - first;
  return {first, simd::avx2_fma_available() ? cols / simd::kPanel * simd::kPanel : 0};
}

void Mlp::pack_panel(Workspace& ws, index_t l, bool transposed, index_t p, index_t from) const {
  const RowMatrixXf& W = weights[l].value;
  const index_t in = W.rows(), out = W.cols();
  const auto i = static_cast<std::size_t>(l);
  if (!transposed) {  // panel p: columns [16 p, 16 p + 16) of W (in x out)
    simd::pack_panels(W.data() + p * simd::kPanel, in, simd::kPanel, out, 1,
                      ws.packed_w[i].data() + p * in * simd::kPanel);
  } else {  // panel p: columns [first + 16 p, ...) of W^T (out x in), i.e. rows of W
    const index_t first = input_grad_columns(l, from).first;
    simd::pack_panels(W.data() + (first + p * simd::kPanel) * out, out, simd::kPanel, 1, out,
                      ws.packed_wt[i].data() + p * out * simd::kPanel);
  }
}

void Mlp::forward(Workspace& ws, int num_threads, const RowRange& fill_input,
                  index_t backward_from, const std::function<void()>& side_task) const {
  const index_t B = ws.rows;
  const index_t L = num_layers();
  const bool avx = simd::avx2_fma_available();
  auto fast = [&](index_t l) { return avx && sizes_[l + 1] % simd::kPanel == 0; };
  // Every layer's weights in panel order first (the B operand of all row chunks), and for a
  // backward its input-gradient W^T too: one panel per task. Packs written by the last optimiser
  // step (step_and_pack) are used as they are.
  const bool packed = ws.packs_current && (backward_from < 0 || ws.packed_wt_from == backward_from);
  if (!packed) {
    ws.packed_w.resize(static_cast<std::size_t>(L));
    ws.packed_wt.resize(static_cast<std::size_t>(L));
    ws.pack_tasks.clear();
    for (index_t l = 0; l < L; ++l) {
      const RowMatrixXf& W = weights[l].value;
      const auto i = static_cast<std::size_t>(l);
      if (fast(l)) {
        ws.packed_w[i].resize(static_cast<std::size_t>(W.size()));
        for (index_t p = 0; p < W.cols() / simd::kPanel; ++p) ws.pack_tasks.push_back({l, 0, p});
      }
      if (backward_from >= 0) {
        const index_t count = input_grad_columns(l, backward_from).count;
        ws.packed_wt[i].resize(static_cast<std::size_t>(W.cols() * count));
        for (index_t p = 0; p < count / simd::kPanel; ++p) ws.pack_tasks.push_back({l, 1, p});
      }
    }
    ws.packed_wt_from = backward_from;
    parallel_for(static_cast<std::int64_t>(ws.pack_tasks.size()), num_threads,
                 [&](std::int64_t t, int) {
                   const auto& [l, transposed, p] = ws.pack_tasks[static_cast<std::size_t>(t)];
                   pack_panel(ws, l, transposed != 0, p, backward_from);
                 });
  }
  // Rows are independent: each task takes its chunk of rows through all the layers. The side
  // task comes last (taken by the first thread to run out of rows).
  const index_t n_tasks = (B + kForwardRows - 1) / kForwardRows;
  parallel_for(n_tasks + (side_task ? 1 : 0), num_threads, [&](std::int64_t t, int) {
    if (t == n_tasks) {
      side_task();
      return;
    }
    const index_t r0 = t * kForwardRows, n = std::min(kForwardRows, B - r0);
    if (fill_input) fill_input(r0, n);
    for (index_t l = 0; l < L; ++l) {
      const RowMatrixXf& W = weights[l].value;
      const RowMatrixXf& in = ws.acts[l];
      RowMatrixXf& out = ws.acts[l + 1];
      const index_t K = W.rows(), N = W.cols();
      auto o = out.middleRows(r0, n);
      if (fast(l)) {
        simd::gemm(n, N, K, simd::Operand{in.data() + r0 * K, K},
                   simd::panel_operand(ws.packed_w[static_cast<std::size_t>(l)].data(), K),
                   simd::Output{out.data() + r0 * N, N}, false);
      } else {
        o.noalias() = in.middleRows(r0, n) * W;
      }
      o.rowwise() += biases[l].value.row(0);
      if (l + 1 < L) o = o.cwiseMax(0.0f);
    }
  });
}

UpdateJob Mlp::step_and_pack(index_t l, const float* dW, const OptimizerConfig& config,
                             Workspace& ws, index_t input_grad_from) {
  Parameter& W = weights[static_cast<std::size_t>(l)];
  const index_t in = W.rows(), out = W.cols();
  const auto i = static_cast<std::size_t>(l);
  const bool pack_w = simd::avx2_fma_available() && out % simd::kPanel == 0;
  const InputGradColumns cols =
      input_grad_from >= 0 ? input_grad_columns(l, input_grad_from) : InputGradColumns{0, 0};
  if ((pack_w && (ws.packed_w.size() <= i || ws.packed_w[i].size() != static_cast<std::size_t>(in * out))) ||
      (cols.count > 0 && (ws.packed_wt.size() <= i ||
                          ws.packed_wt[i].size() != static_cast<std::size_t>(out * cols.count)))) {
    throw std::logic_error("Mlp::step_and_pack: the workspace holds no packs of this layer");
  }
  float* pw = pack_w ? ws.packed_w[i].data() : nullptr;
  float* pwt = cols.count > 0 ? ws.packed_wt[i].data() : nullptr;
  ws.packed_wt_from = input_grad_from;
  const float* value = W.value.data();
  const index_t first = cols.first, end_t = cols.first + cols.count;
  auto pack_rows = [=](index_t r0, index_t r1) {
    if (pw != nullptr) {  // row r's 16-float segment of every panel of W
      for (index_t p = 0; p < out / simd::kPanel; ++p) {
        float* dst = pw + p * in * simd::kPanel;
        for (index_t r = r0; r < r1; ++r) {
          std::memcpy(dst + r * simd::kPanel, value + r * out + p * simd::kPanel,
                      simd::kPanel * sizeof(float));
        }
      }
    }
    // Row c of W is lane (c - first) % 16 of panel (c - first) / 16 of W^T's packing.
    for (index_t c = std::max(r0, first); c < std::min(r1, end_t);) {
      const index_t p = (c - first) / simd::kPanel, lane = (c - first) % simd::kPanel;
      const index_t n = std::min({r1, end_t, first + (p + 1) * simd::kPanel}) - c;
      simd::pack_rows_transposed(value + c * out, n, out, out,
                                 pwt + p * out * simd::kPanel + lane);
      c += n;
    }
  };
  // Tasks of whole rows, a multiple of 16 (whole W^T panels when its columns start at one).
  return W.dense_step(dW, config, pack_rows, simd::kPanel);
}

void Mlp::backward(Workspace& ws, std::vector<RowMatrixXf>& dW, std::vector<RowMatrixXf>& db,
                   int num_threads, index_t input_grad_from,
                   const RowRange& input_grad_ready, bool accumulate) const {
  const index_t B = ws.rows;
  const index_t L = num_layers();
  const bool avx = simd::avx2_fma_available();
  // dH of each layer also in panel order (the weight-gradient kernel's B operand), double
  // buffered: layer l reads packed_dh[(l + 1) % 2] while its input-gradient tasks fill
  // packed_dh[l % 2] for layer l - 1.
  auto packs_dh = [&](index_t layer) { return avx && sizes_[layer + 1] % simd::kPanel == 0; };
  for (auto& buf : ws.packed_dh) buf.resize(static_cast<std::size_t>(B * max_width_));
  if (packs_dh(L - 1)) {
    simd::pack_panels(ws.grads[L].data(), B, sizes_[L], sizes_[L], 1,
                      ws.packed_dh[L % 2].data());
  }
  for (index_t l = L - 1; l >= 0; --l) {
    // dH: gradient w.r.t. the pre-activation of layer l's output (ReLU already applied to it by
    // the previous iteration's input-gradient tasks).
    const RowMatrixXf& dH = ws.grads[l + 1];
    const RowMatrixXf& A = ws.acts[l];
    const index_t in_dim = sizes_[l], out_dim = sizes_[l + 1];
    // Weight gradient: tiles of kColChunk x kColChunk of dW (in x out), each the product of a
    // column block of A^T and a column block of dH over all B rows.
    const index_t dw_row_tiles = (in_dim + kColChunk - 1) / kColChunk;
    const index_t dw_tasks = dw_row_tiles * ((out_dim + kColChunk - 1) / kColChunk);
    const bool fast_dw = packs_dh(l);
    const float* pdh = ws.packed_dh[(l + 1) % 2].data();
    const bool pack_next = l > 0 && packs_dh(l - 1);
    float* next_pdh = ws.packed_dh[l % 2].data();
    // Input gradient dA = dH W^T, only for columns [c_from, in_dim) (layer 0: the caller's
    // input_grad_from; hidden layers: all), then the ReLU of the layer below applied row by row.
    const InputGradColumns fast_cols = input_grad_columns(l, input_grad_from);
    const index_t c_from = fast_cols.first;
    const index_t da_cols = in_dim - c_from;
    const index_t da_fast_cols = fast_cols.count;
    const bool notify = l == 0 && input_grad_ready != nullptr;
    const index_t da_tasks =
        da_cols > 0 || notify ? (B + kInputGradRows - 1) / kInputGradRows : 0;
    const RowMatrixXf& W = weights[l].value;
    RowMatrixXf& dA = ws.grads[l];
    // B operand: columns [c_from, c_from + da_fast_cols) of W^T (out x in), panel-major; packed
    // by the forward when it knew of this backward, else here.
    const auto li = static_cast<std::size_t>(l);
    if (da_fast_cols > 0 && ws.packed_wt_from != input_grad_from) {
      ws.packed_wt.resize(static_cast<std::size_t>(L));
      ws.packed_wt[li].resize(static_cast<std::size_t>(out_dim * da_fast_cols));
      for (index_t p = 0; p < da_fast_cols / simd::kPanel; ++p) {
        pack_panel(ws, l, true, p, input_grad_from);
      }
    }
    // Input-gradient tasks (the larger ones) first, then the weight-gradient tiles.
    parallel_for(dw_tasks + da_tasks, num_threads, [&](std::int64_t task, int) {
      if (task >= da_tasks) {
        const index_t t = task - da_tasks;
        const index_t r0 = (t % dw_row_tiles) * kColChunk, c0 = (t / dw_row_tiles) * kColChunk;
        const index_t h = std::min(kColChunk, in_dim - r0), w = std::min(kColChunk, out_dim - c0);
        if (fast_dw) {
          // dW[r0.., c0..] += A[:, r0..]^T dH[:, c0..], A^T read through strides.
          simd::gemm(h, w, B, simd::Operand{A.data() + r0, 1, in_dim, simd::kPanel * in_dim},
                     simd::panel_operand(pdh + c0 * B, B),
                     simd::Output{dW[l].data() + r0 * out_dim + c0, out_dim}, accumulate);
        } else if (accumulate) {
          dW[l].block(r0, c0, h, w).noalias() +=
              A.middleCols(r0, h).transpose() * dH.middleCols(c0, w);
        } else {
          dW[l].block(r0, c0, h, w).noalias() =
              A.middleCols(r0, h).transpose() * dH.middleCols(c0, w);
        }
        if (r0 == 0) {
          auto db_block = db[l].middleCols(c0, w);
          const auto column_sums = dH.middleCols(c0, w).colwise().sum();
          if (accumulate) {
            db_block += column_sums;
          } else {
            db_block = column_sums;
          }
        }
        return;
      }
      const index_t r0 = task * kInputGradRows, nr = std::min(kInputGradRows, B - r0);
      if (da_fast_cols > 0) {
        simd::gemm(nr, da_fast_cols, out_dim, simd::Operand{dH.data() + r0 * out_dim, out_dim},
                   simd::panel_operand(ws.packed_wt[li].data(), out_dim),
                   simd::Output{dA.data() + r0 * in_dim + c_from, in_dim}, false);
      }
      if (da_fast_cols < da_cols) {
        const index_t c1 = c_from + da_fast_cols, nc = da_cols - da_fast_cols;
        dA.block(r0, c1, nr, nc).noalias() =
            dH.middleRows(r0, nr) * W.middleRows(c1, nc).transpose();
      }
      if (l > 0) {
        // ReLU of layer l - 1: acts[l] = max(h, 0), so dh = dact where acts[l] > 0.
        auto g = dA.middleRows(r0, nr);
        g = (A.middleRows(r0, nr).array() > 0.0f).select(g, 0.0f);
        if (pack_next) {
          // These rows of the next layer's dH, into their place in each panel.
          for (index_t p = 0; p < in_dim / simd::kPanel; ++p) {
            simd::pack_panels(dA.data() + r0 * in_dim + p * simd::kPanel, nr, simd::kPanel, in_dim,
                              1, next_pdh + p * B * simd::kPanel + r0 * simd::kPanel);
          }
        }
      }
      if (notify) input_grad_ready(r0, nr);
    });
  }
  ws.packed_wt_from = -1;  // used: the weights change next
}

}  // namespace fastsoftmax
