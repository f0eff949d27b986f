#pragma once
// The query tower's dense layers: x -> [Linear -> ReLU] * len(hidden) -> Linear -> psi (dim).
//
// Layer l maps a B x in_l activation A_l to A_{l+1} = A_l W_l + b_l (W_l is in_l x out_l, row-major,
// as x @ W in NumPy), followed by ReLU on every layer but the last. Work is split into fixed chunks
// of rows (forward, input gradient) or tiles (weight gradient), so every output element
// is computed by the same sequence of operations whatever the thread count.

#include <array>
#include <functional>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"

namespace fastsoftmax {

class Mlp {
 public:
  Mlp() = default;
  /// sizes = {input, hidden..., output}; at least two entries.
  explicit Mlp(const std::vector<index_t>& sizes);

  index_t num_layers() const { return static_cast<index_t>(weights.size()); }
  index_t input_dim() const { return sizes_.front(); }
  index_t output_dim() const { return sizes_.back(); }
  const std::vector<index_t>& sizes() const { return sizes_; }

  /// Per-batch activations; acts[0] is the input (filled by the caller, B x input_dim).
  struct Workspace {
    std::vector<RowMatrixXf> acts;   // acts[l]: B x sizes[l]
    std::vector<RowMatrixXf> grads;  // grads[l]: gradient w.r.t. acts[l] (pre-ReLU for l > 0)
    /// Sizes the buffers for B rows (no reallocation when B does not grow).
    void resize(const Mlp& mlp, index_t B);
    index_t rows = 0;
    std::vector<std::vector<float>> packed_w;   // every layer's W in panel order (forward)
    std::vector<std::vector<float>> packed_wt;  // every layer's input-gradient W^T (backward)
    index_t packed_wt_from = -1;  // input_grad_from of packed_wt (-1: not packed)
    /// True when packed_w (and packed_wt, for packed_wt_from) hold the current weights: set by
    /// the caller after the steps of step_and_pack have run; whoever may change the weights
    /// otherwise must clear it (the next forward then packs them itself).
    bool packs_current = false;
    std::vector<float> packed_dh[2];  // scratch: output gradients in panel order (backward)
    std::vector<std::array<index_t, 3>> pack_tasks;  // scratch: (layer, transposed, panel)
  };

  /// Called from the parallel tasks with a range [r0, r0 + n) of the batch's rows.
  using RowRange = std::function<void(index_t r0, index_t n)>;

  /// acts[1..L] from acts[0] for the first `B` rows. The rows are split into fixed chunks, each
  /// taken through every layer by one task; with `fill_input`, the task first fills its rows of
  /// acts[0] by calling it (so the input lookups share the forward's parallel region). With
  /// `backward_from` >= 0, the weights are also packed for a backward with that input_grad_from
  /// (in the same parallel region as the forward's own packing; valid until the weights change).
  /// `side_task`, when given, runs once as one more task of the forward's region (work of the
  /// caller's that does not touch the workspace, e.g. gathering the batch's targets).
  void forward(Workspace& ws, int num_threads, const RowRange& fill_input = nullptr,
               index_t backward_from = -1,
               const std::function<void()>& side_task = nullptr) const;

  /// Given dL/dpsi in ws.grads[L], back-propagates: writes columns [input_grad_from, input_dim)
  /// of ws.grads[0] (dL/dinput; the others are left as they are: inputs without parameters need
  /// no gradient) and the weight and bias gradients into dW[l] / db[l] (shaped like the
  /// parameters): added to them with `accumulate`, else written over them. ws.grads[L] is read
  /// only. With `input_grad_ready`, it is called (from the last layer's tasks) for every range of
  /// rows of ws.grads[0] once those rows are final; the ranges are fixed chunks of
  /// kInputGradRows rows and cover all B rows.
  void backward(Workspace& ws, std::vector<RowMatrixXf>& dW, std::vector<RowMatrixXf>& db,
                int num_threads, index_t input_grad_from = 0,
                const RowRange& input_grad_ready = nullptr, bool accumulate = true) const;

  /// The optimiser step of layer l's weights with gradient dW (in x out), as Parameter::
  /// dense_step, whose tasks also write their updated rows into ws.packed_w and, for a
  /// backward with input_grad_from, ws.packed_wt (while the rows are in cache). ws must hold
  /// this layer's packs from a forward with the same input_grad_from. After every step of a
  /// batch has run, the caller sets ws.packs_current: the next forward and backward then use
  /// these packs instead of packing (a parallel region per batch, and the weights read again).
  UpdateJob step_and_pack(index_t l, const float* dW, const OptimizerConfig& config,
                          Workspace& ws, index_t input_grad_from);

  /// Rows per task of the forward and of the input gradient.
  static constexpr index_t kForwardRows = 64;
  static constexpr index_t kInputGradRows = 64;

  std::vector<Parameter> weights;  // in_l x out_l
  std::vector<Parameter> biases;   // 1 x out_l

 private:
  // Columns [first, first + count) of layer l's input gradient taken by the AVX2 kernel.
  struct InputGradColumns {
    index_t first, count;
  };
  InputGradColumns input_grad_columns(index_t l, index_t input_grad_from) const;
  // Packs panel p of layer l's W (forward) or, `transposed`, of its W^T for input_grad_from.
  void pack_panel(Workspace& ws, index_t l, bool transposed, index_t p,
                  index_t input_grad_from) const;

  std::vector<index_t> sizes_;
  index_t max_width_ = 0;  // the widest layer
};

}  // namespace fastsoftmax
