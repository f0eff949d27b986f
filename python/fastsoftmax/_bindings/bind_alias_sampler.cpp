#include "binding_utils.h"
#include "fastsoftmax/alias_sampler.h"

namespace fastsoftmax::py {

void bind_alias_sampler(pyb::module_& m) {
  pyb::class_<AliasSampler>(m, "AliasSampler")
      .def(pyb::init([](pyb::handle weights) {
             auto w = require_array<double>(weights, "weights", 1);
             ReleaseGil release;
             return new AliasSampler(w.data(), w.shape(0));
           }),
           pyb::arg("weights"))
      .def("__len__", &AliasSampler::size)
      .def_property_readonly("probabilities",
                             [](const AliasSampler& s) {
                               const auto& p = s.probabilities();
                               pyb::array_t<double> out(static_cast<pyb::ssize_t>(p.size()));
                               std::copy(p.begin(), p.end(), out.mutable_data());
                               return out;
                             })
      .def("table",
           [](const AliasSampler& s) {
             const auto& cells = s.cells();
             const auto n = static_cast<pyb::ssize_t>(cells.size());
             pyb::array_t<float> keep(n);
             pyb::array_t<std::int32_t> alias(n);
             for (pyb::ssize_t i = 0; i < n; ++i) {
               keep.mutable_data()[i] = cells[i].keep;
               alias.mutable_data()[i] = cells[i].alias;
             }
             return pyb::make_tuple(keep, alias);
           })
      .def(
          "sample",
          [](const AliasSampler& s, std::int64_t size, std::uint64_t seed, int num_threads) {
            if (size < 0) {
              throw std::invalid_argument(str_cat("size: expected an integer >= 0, got ", size));
            }
            resolve_num_threads(num_threads);
            pyb::array_t<std::int64_t> out(size);
            std::int64_t* data = out.mutable_data();
            {
              ReleaseGil release;
              s.sample(data, size, seed, num_threads);
            }
            return out;
          },
          pyb::arg("size"), pyb::arg("seed"), pyb::arg("num_threads"));
}

}  // namespace fastsoftmax::py
