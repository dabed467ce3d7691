// Best-fit-decreasing sequence packing (the trainer's micro-batch packer).
#pragma once
#include <cstdint>
#include <vector>

namespace mathforge {

struct PackResult {
  std::vector<int64_t> items;       // item ids grouped by bin, bins in creation order
  std::vector<int64_t> bin_starts;  // CSR offsets into `items`, size n_bins + 1
};

// Packs items (lengths[i] <= capacity, lengths[i] >= 0) into bins of `capacity` tokens.
// Items are taken longest first (ties: lower id first); each goes to the bin whose remaining
// capacity is the smallest that still fits it (ties: the bin that reached that capacity last),
// else to a new bin. O(n + C + n log_64 C) time, O(n + C) memory. Deterministic.
PackResult best_fit_decreasing(const int64_t* lengths, int64_t n, int64_t capacity);

}  // namespace mathforge
