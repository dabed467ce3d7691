// mathforge._native: the compiled helpers behind mathforge's Python API.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>

#include <utility>

#include "packing.hpp"

namespace nb = nanobind;

namespace {

template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule deleter(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(owned->data(), {owned->size()}, deleter);
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "Compiled helpers for mathforge (sequence packing).";
  m.def(
      "best_fit_decreasing",
      [](nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> lengths, int64_t max_tokens) {
        mathforge::PackResult r;
        {
          nb::gil_scoped_release release;
          r = mathforge::best_fit_decreasing(lengths.data(), static_cast<int64_t>(lengths.shape(0)), max_tokens);
        }
        return std::make_pair(to_numpy(std::move(r.items)), to_numpy(std::move(r.bin_starts)));
      },
      nb::arg("lengths"), nb::arg("max_tokens"),
      "Best-fit-decreasing packing of int64 `lengths` (each in [0, max_tokens]) into bins of `max_tokens`.\n"
      "Returns (items, bin_starts): item ids grouped by bin, and CSR offsets of each bin into `items`.");
}
