// Private test hooks for the negative samplers and the sampled-softmax kernel (the public entry
// point is fs.SoftmaxModel(loss="sampled")): draw one batch of negatives; evaluate the kernel on
// given draws (checked against the NumPy reference); draw and evaluate in one call (bias studies).
#include <optional>
#include <string>

#include "binding_utils.h"
#include "fastsoftmax/negative_sampler.h"
#include "fastsoftmax/sampled_softmax.h"

namespace fastsoftmax::py {
namespace {

using F32 = pyb::array_t<float, pyb::array::c_style>;
using F64 = pyb::array_t<double, pyb::array::c_style>;
using I64 = pyb::array_t<std::int64_t, pyb::array::c_style>;

// The arrays of one batch, checked against each other.
struct BatchArrays {
  F32 psi, items, bias, weights;
  I64 indptr, indices;
  index_t B = 0, d = 0, n = 0;
  bool has_bias = false;
};

BatchArrays check_batch(pyb::handle psi, pyb::handle items, pyb::handle bias, pyb::handle indptr,
                        pyb::handle indices, pyb::handle weights) {
  BatchArrays a;
  a.psi = require_array<float>(psi, "psi", 2);
  a.items = require_array<float>(items, "items", 2);
  a.B = a.psi.shape(0);
  a.d = a.psi.shape(1);
  a.n = a.items.shape(0);
  if (a.items.shape(1) != a.d) {
    throw_invalid("items: expected ", a.d, " columns (psi's dim), got ", a.items.shape(1));
  }
  if (a.n < 1) throw_invalid("items: expected at least one item");
  if (!bias.is_none()) {
    a.bias = require_array<float>(bias, "bias", 1);
    if (a.bias.shape(0) != a.n) throw_invalid("bias: expected ", a.n, " entries, got ", a.bias.shape(0));
    a.has_bias = true;
  }
  a.indptr = require_array<std::int64_t>(indptr, "indptr", 1);
  a.indices = require_array<std::int64_t>(indices, "indices", 1);
  if (a.indptr.shape(0) != a.B + 1) {
    throw_invalid("indptr: expected ", a.B + 1, " entries, got ", a.indptr.shape(0));
  }
  const auto* p = a.indptr.data();
  if (p[0] != 0) throw_invalid("indptr: expected indptr[0] == 0, got ", p[0]);
  for (index_t b = 0; b < a.B; ++b) {
    if (p[b + 1] < p[b]) throw_invalid("indptr: expected a non-decreasing array");
  }
  if (a.indices.shape(0) != p[a.B]) {
    throw_invalid("indices: expected ", p[a.B], " entries, got ", a.indices.shape(0));
  }
  const auto* ix = a.indices.data();
  for (index_t b = 0; b < a.B; ++b) {
    for (index_t k = p[b]; k < p[b + 1]; ++k) {
      if (ix[k] < 0 || ix[k] >= a.n) throw_out_of_range("indices: item id ", ix[k], " outside [0, ", a.n, ")");
      if (k > p[b] && ix[k] <= ix[k - 1]) throw_invalid("indices: expected strictly increasing ids per row");
    }
  }
  if (!weights.is_none()) {
    a.weights = require_array<float>(weights, "weights", 1);
    if (a.weights.shape(0) != p[a.B]) {
      throw_invalid("weights: expected ", p[a.B], " entries, got ", a.weights.shape(0));
    }
  }
  return a;
}

// The batch's arrays as the core's views.
SampledBatch batch_view(const BatchArrays& a) {
  ItemParamsView items{a.n, a.d, a.items.data(), a.has_bias ? a.bias.data() : nullptr};
  TargetsView targets{a.B, a.indptr.data(), a.indices.data(), a.weights.data()};
  return SampledBatch{a.psi.data(), items, targets};
}

NegativeSamplerOptions sampler_options(const std::string& sampler, std::int64_t num_negatives,
                                       bool share, std::int64_t hard_pool, double temperature,
                                       double hard_fraction) {
  NegativeSamplerOptions o;
  o.kind = parse_sampler_kind(sampler);
  o.num_negatives = num_negatives;
  o.share = share;
  o.hard_pool = hard_pool;
  o.temperature = temperature;
  o.hard_fraction = hard_fraction;
  return o;
}

const double* optional_weights(pyb::handle w, index_t n, F64& keep) {
  if (w.is_none()) return nullptr;
  keep = require_array<double>(w, "sampler_weights", 1);
  if (keep.shape(0) != n) throw_invalid("sampler_weights: expected ", n, " entries, got ", keep.shape(0));
  return keep.data();
}

pyb::tuple gradient_result(double loss, RowMatrixXf& dpsi, std::vector<index_t>& rows,
                           RowMatrixXf& grad, std::vector<float>& bgrad, bool has_bias) {
  const auto K = static_cast<pyb::ssize_t>(rows.size());
  I64 r(K);
  std::copy(rows.begin(), rows.end(), r.mutable_data());
  F32 g({K, static_cast<pyb::ssize_t>(grad.cols())});
  std::copy_n(grad.data(), K * grad.cols(), g.mutable_data());
  F32 dp({static_cast<pyb::ssize_t>(dpsi.rows()), static_cast<pyb::ssize_t>(dpsi.cols())});
  std::copy_n(dpsi.data(), dpsi.size(), dp.mutable_data());
  pyb::object gb = pyb::none();
  if (has_bias) {
    F32 b(K);
    std::copy_n(bgrad.data(), K, b.mutable_data());
    gb = b;
  }
  return pyb::make_tuple(loss, dp, r, g, gb);
}

// The test hooks, one function each.
void def_sample_negatives(pyb::module_& t) {
  t.def(
      "sample_negatives",
      [](const std::string& sampler, std::int64_t n_items, std::int64_t num_negatives, bool share,
         std::int64_t hard_pool, double temperature, double hard_fraction, pyb::handle weights,
         pyb::handle psi, pyb::handle items, pyb::handle bias, pyb::handle indptr,
         pyb::handle indices, std::uint64_t seed, int num_threads, std::int64_t mixed_negatives) {
        resolve_num_threads(num_threads);
        auto opts =
            sampler_options(sampler, num_negatives, share, hard_pool, temperature, hard_fraction);
        opts.mixed_uniform = mixed_negatives;
        F64 w_keep;
        const double* w = optional_weights(weights, n_items, w_keep);
        SamplerBatch batch;
        BatchArrays a;
        if (opts.kind == SamplerKind::kScore || opts.kind == SamplerKind::kInBatch ||
            !psi.is_none()) {
          a = check_batch(psi, items, bias, indptr, indices, pyb::none());
          if (a.n != n_items) throw_invalid("items: expected ", n_items, " rows, got ", a.n);
          batch.B = a.B;
          batch.dim = a.d;
          batch.psi = a.psi.data();
          batch.items = a.items.data();
          batch.bias = a.has_bias ? a.bias.data() : nullptr;
          batch.indptr = a.indptr.data();
          batch.indices = a.indices.data();
        } else {
          batch.B = 1;
        }
        NegativeSampler s(n_items, opts, w);
        NegativeDraws out;
        {
          ReleaseGil release;
          s.sample(batch, seed, num_threads, out);
        }
        I64 ids({static_cast<pyb::ssize_t>(out.rows), static_cast<pyb::ssize_t>(out.m)});
        std::copy(out.ids.begin(), out.ids.end(), ids.mutable_data());
        F32 lq({static_cast<pyb::ssize_t>(out.rows), static_cast<pyb::ssize_t>(out.m)});
        std::copy(out.log_q.begin(), out.log_q.end(), lq.mutable_data());
        F64 log_norm(static_cast<pyb::ssize_t>(out.log_norm.size()));
        std::copy(out.log_norm.begin(), out.log_norm.end(), log_norm.mutable_data());
        pyb::dict result;
        result["ids"] = ids;
        result["log_q"] = lq;
        result["log_norm"] = log_norm;
        result["m_hard"] = out.m_hard;
        return result;
      },
      pyb::arg("sampler"), pyb::arg("n_items"), pyb::arg("num_negatives"), pyb::arg("share"),
      pyb::arg("hard_pool"), pyb::arg("temperature"), pyb::arg("hard_fraction"),
      pyb::arg("weights"), pyb::arg("psi"), pyb::arg("items"), pyb::arg("bias"),
      pyb::arg("indptr"), pyb::arg("indices"), pyb::arg("seed"), pyb::arg("num_threads"),
      pyb::arg("mixed_negatives") = 0,
      "Test hook: one batch of negatives -> dict(ids, log_q, log_norm, m_hard).");
}

void def_in_batch_streaming(pyb::module_& t) {
  t.def(
      "in_batch_streaming",
      [](std::int64_t n_items, const pyb::list& batches, double alpha) {
        NegativeSamplerOptions o;
        o.kind = SamplerKind::kInBatch;
        o.num_negatives = 0;
        o.streaming = true;
        o.streaming_alpha = alpha;
        const std::vector<double> ones(static_cast<std::size_t>(n_items), 1.0);
        NegativeSampler s(n_items, o, ones.data());
        NegativeDraws out;
        pyb::list result;
        for (std::size_t t = 0; t < batches.size(); ++t) {
          auto ids = require_array<std::int64_t>(batches[t], "batches", 1);
          const index_t indptr[2] = {0, static_cast<index_t>(ids.shape(0))};
          SamplerBatch batch;
          batch.B = 1;
          batch.indptr = indptr;
          batch.indices = ids.data();
          s.observe(ids.data(), indptr[1], static_cast<std::int64_t>(t) + 1);
          s.sample(batch, 0, 1, out);
          I64 drawn(static_cast<pyb::ssize_t>(out.m));
          std::copy(out.ids.begin(), out.ids.end(), drawn.mutable_data());
          F32 lq(static_cast<pyb::ssize_t>(out.m));
          std::copy(out.log_q.begin(), out.log_q.end(), lq.mutable_data());
          result.append(pyb::make_tuple(drawn, lq));
        }
        return result;
      },
      pyb::arg("n_items"), pyb::arg("batches"), pyb::arg("alpha"),
      "Test hook: the streaming in-batch sampler over a sequence of training batches (each the "
      "int64 ids of its positive entries) -> [(ids, log_q) per batch].");
}

void def_sampled_softmax(pyb::module_& t) {
  t.def(
      "sampled_softmax",
      [](pyb::handle psi, pyb::handle items, pyb::handle bias, pyb::handle indptr,
         pyb::handle indices, pyb::handle weights, pyb::handle ids, pyb::handle log_q,
         pyb::handle pos_log_q, bool logq_correction,
         bool remove_accidental_hits, double gravity, float grad_scale, int num_threads) {
        resolve_num_threads(num_threads);
        BatchArrays a = check_batch(psi, items, bias, indptr, indices, weights);
        auto ids_a = require_array<std::int64_t>(ids, "ids", 2);
        auto lq_a = require_array<float>(log_q, "log_q", 2);
        if (lq_a.shape(0) != ids_a.shape(0) || lq_a.shape(1) != ids_a.shape(1)) {
          throw_invalid("log_q: expected the shape of ids");
        }
        NegativeDraws draws;
        draws.rows = ids_a.shape(0);
        draws.m = ids_a.shape(1);
        draws.ids.assign(ids_a.data(), ids_a.data() + ids_a.size());
        draws.log_q.assign(lq_a.data(), lq_a.data() + lq_a.size());
        for (const auto j : draws.ids) {
          if (j < 0 || j >= a.n) throw_out_of_range("ids: item id ", j, " outside [0, ", a.n, ")");
        }
        for (const auto v : draws.log_q) {
          if (!std::isfinite(v)) throw_invalid("log_q: expected finite values, got ", v);
        }
        F32 plq;
        if (!pos_log_q.is_none()) {
          plq = require_array<float>(pos_log_q, "pos_log_q", 1);
          if (plq.shape(0) != a.indices.shape(0)) throw_invalid("pos_log_q: one per target entry");
        }
        SampledSoftmaxOptions opts;
        opts.logq_correction = logq_correction;
        opts.remove_accidental_hits = remove_accidental_hits;
        opts.gravity = gravity;
        RowMatrixXf dpsi(a.B, a.d), grad;
        std::vector<index_t> rows;
        std::vector<float> bgrad;
        SampledSoftmaxWorkspace ws;
        double loss;
        {
          ReleaseGil release;
          loss = sampled_softmax_forward_backward(
              batch_view(a), draws, pos_log_q.is_none() ? nullptr : plq.data(), opts, grad_scale,
              num_threads, SampledGradients{dpsi.data(), &rows, &grad, &bgrad}, ws);
        }
        return gradient_result(loss, dpsi, rows, grad, bgrad, a.has_bias);
      },
      pyb::arg("psi"), pyb::arg("items"), pyb::arg("bias"), pyb::arg("indptr"),
      pyb::arg("indices"), pyb::arg("weights"), pyb::arg("ids"), pyb::arg("log_q"),
      pyb::arg("pos_log_q"), pyb::arg("logq_correction"),
      pyb::arg("remove_accidental_hits"), pyb::arg("gravity"), pyb::arg("grad_scale"),
      pyb::arg("num_threads"),
      "Test hook: sampled softmax on given draws -> (loss, dpsi, item_rows, item_grad, bias_grad).");
}

void def_sampled_softmax_estimate(pyb::module_& t) {
  t.def(
      "sampled_softmax_estimate",
      [](const std::string& sampler, std::int64_t num_negatives, bool share,
         std::int64_t hard_pool, double temperature, double hard_fraction,
         pyb::handle sampler_weights, pyb::handle psi, pyb::handle items, pyb::handle bias,
         pyb::handle indptr, pyb::handle indices, pyb::handle weights, bool logq_correction,
         bool remove_accidental_hits, double gravity, float grad_scale, std::uint64_t seed,
         int num_threads) {
        resolve_num_threads(num_threads);
        BatchArrays a = check_batch(psi, items, bias, indptr, indices, weights);
        const auto opts =
            sampler_options(sampler, num_negatives, share, hard_pool, temperature, hard_fraction);
        F64 w_keep;
        const double* w = optional_weights(sampler_weights, a.n, w_keep);
        SampledSoftmaxOptions sopts;
        sopts.logq_correction = logq_correction;
        sopts.remove_accidental_hits = remove_accidental_hits;
        sopts.gravity = gravity;
        SampledSoftmax loss_fn(a.n, opts, w, sopts);
        RowMatrixXf dpsi(a.B, a.d), grad;
        std::vector<index_t> rows;
        std::vector<float> bgrad;
        double loss;
        {
          ReleaseGil release;
          loss = loss_fn.forward_backward(batch_view(a), seed, grad_scale, num_threads,
                                          SampledGradients{dpsi.data(), &rows, &grad, &bgrad});
        }
        return gradient_result(loss, dpsi, rows, grad, bgrad, a.has_bias);
      },
      pyb::arg("sampler"), pyb::arg("num_negatives"), pyb::arg("share"), pyb::arg("hard_pool"),
      pyb::arg("temperature"), pyb::arg("hard_fraction"), pyb::arg("sampler_weights"),
      pyb::arg("psi"), pyb::arg("items"), pyb::arg("bias"), pyb::arg("indptr"),
      pyb::arg("indices"), pyb::arg("weights"), pyb::arg("logq_correction"),
      pyb::arg("remove_accidental_hits"), pyb::arg("gravity"), pyb::arg("grad_scale"),
      pyb::arg("seed"), pyb::arg("num_threads"),
      "Test hook: draw negatives for `seed` and evaluate -> (loss, dpsi, rows, grad, bias_grad).");
}

void def_gravity_exact(pyb::module_& t) {
  t.def(
      "gravity_exact",
      [](pyb::handle psi, pyb::handle items, double gamma, float grad_scale, int num_threads) {
        resolve_num_threads(num_threads);
        auto p = require_array<float>(psi, "psi", 2);
        auto v = require_array<float>(items, "items", 2);
        if (v.shape(1) != p.shape(1)) throw_invalid("items: expected psi's number of columns");
        const index_t B = p.shape(0), d = p.shape(1), n = v.shape(0);
        F32 dpsi({B, d}), dv({n, d});
        std::fill_n(dpsi.mutable_data(), B * d, 0.0f);
        std::fill_n(dv.mutable_data(), n * d, 0.0f);
        double loss;
        {
          ReleaseGil release;
          loss = gravity_exact(p.data(), B, d, v.data(), n, gamma, grad_scale, num_threads,
                               dpsi.mutable_data(), dv.mutable_data());
        }
        return pyb::make_tuple(loss, dpsi, dv);
      },
      pyb::arg("psi"), pyb::arg("items"), pyb::arg("gamma"), pyb::arg("grad_scale"),
      pyb::arg("num_threads"), "Test hook: exact gravity -> (loss, dpsi, ditems).");
}

}  // namespace

void bind_sampled_softmax(pyb::module_& m) {
  pyb::module_ t = testing_module(m);
  def_sample_negatives(t);
  def_in_batch_streaming(t);
  def_sampled_softmax(t);
  def_sampled_softmax_estimate(t);
  def_gravity_exact(t);
}

}  // namespace fastsoftmax::py
