// mathforge._native: the compiled helpers behind mathforge's Python API.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "minhash.hpp"
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
  m.doc() = "Compiled helpers for mathforge (sequence packing, n-gram hashing).";
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
  m.def(
      "ngram_hashes",
      [](const std::string& text, int n) { return to_numpy(mathforge::ngram_hashes(text, n)); },
      nb::arg("text"), nb::arg("n"),
      "uint64 hashes of the word n-grams of `text` (lower-cased ASCII words; empty if fewer than n words).");
  m.def(
      "minhash_signatures",
      [](std::vector<std::string> texts, int n, int num_perm, uint64_t seed) {
        if (num_perm <= 0) throw std::invalid_argument("num_perm must be positive");
        auto* owned = new std::vector<uint64_t>(texts.size() * static_cast<size_t>(num_perm));
        {
          nb::gil_scoped_release release;
          for (size_t i = 0; i < texts.size(); ++i)
            mathforge::minhash_signature(texts[i], n, num_perm, seed, owned->data() + i * num_perm);
        }
        nb::capsule deleter(owned, [](void* p) noexcept { delete static_cast<std::vector<uint64_t>*>(p); });
        return nb::ndarray<nb::numpy, uint64_t, nb::ndim<2>>(owned->data(), {texts.size(), size_t(num_perm)},
                                                             deleter);
      },
      nb::arg("texts"), nb::arg("n"), nb::arg("num_perm"), nb::arg("seed") = 0,
      "MinHash signatures [len(texts), num_perm] (uint64) of the word n-gram sets of `texts`.");
  m.def(
      "minhash_signatures32",
      [](std::vector<std::string> texts, int n, int num_perm, uint64_t seed) {
        if (num_perm <= 0) throw std::invalid_argument("num_perm must be positive");
        auto* owned = new std::vector<uint32_t>(texts.size() * static_cast<size_t>(num_perm));
        {
          nb::gil_scoped_release release;
          std::vector<uint64_t> full(num_perm);
          for (size_t i = 0; i < texts.size(); ++i) {
            mathforge::minhash_signature(texts[i], n, num_perm, seed, full.data());
            for (int p = 0; p < num_perm; ++p) (*owned)[i * num_perm + p] = static_cast<uint32_t>(full[p] >> 32);
          }
        }
        nb::capsule deleter(owned, [](void* p) noexcept { delete static_cast<std::vector<uint32_t>*>(p); });
        return nb::ndarray<nb::numpy, uint32_t, nb::ndim<2>>(owned->data(), {texts.size(), size_t(num_perm)},
                                                             deleter);
      },
      nb::arg("texts"), nb::arg("n"), nb::arg("num_perm"), nb::arg("seed") = 0,
      "The high 32 bits of `minhash_signatures` (uint32 [len(texts), num_perm]): the minimum of the 64-bit hashes\n"
      "keeps its high bits, so these are MinHash signatures too, at half the memory.");
  m.def(
      "near_duplicate_roots",
      [](nb::ndarray<const uint32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> sig,
         nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> rows, int bands, double threshold) {
        const int num_perm = static_cast<int>(sig.shape(1));
        if (bands <= 0 || num_perm % bands) throw std::invalid_argument("num_perm must be a positive multiple of bands");
        const int64_t total = static_cast<int64_t>(sig.shape(0)), m = static_cast<int64_t>(rows.shape(0));
        for (int64_t i = 0; i < m; ++i)
          if (rows.data()[i] < 0 || rows.data()[i] >= total) throw std::out_of_range("rows index outside sig");
        std::vector<int64_t> roots;
        {
          nb::gil_scoped_release release;
          roots = mathforge::near_duplicate_roots(sig.data(), num_perm, rows.data(), m, bands, threshold);
        }
        return to_numpy(std::move(roots));
      },
      nb::arg("sig"), nb::arg("rows"), nb::arg("bands"), nb::arg("threshold"),
      "LSH banding + union-find over uint32 signatures `sig` restricted to `rows` (int64, priority order): per\n"
      "position, the earliest position of its near-duplicate component (see csrc/minhash.hpp).");
}
