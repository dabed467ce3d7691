#include "packing.hpp"

#include <stdexcept>
#include <string>

namespace mathforge {
namespace {

// A 64-ary tree of bitsets over the values 0..size-1 (a segment tree whose nodes are machine
// words): set/clear a value and find the smallest set value >= x in O(log_64 size).
class SuccessorSet {
 public:
  explicit SuccessorSet(int64_t size) {
    int64_t n = size;
    do {
      n = (n + 63) / 64;
      levels_.emplace_back(static_cast<size_t>(n), 0);
    } while (n > 1);
  }

  void set(int64_t v) {
    for (auto& level : levels_) {
      uint64_t& word = level[v >> 6];
      bool was_empty = word == 0;
      word |= uint64_t{1} << (v & 63);
      if (!was_empty) return;
      v >>= 6;
    }
  }

  void clear(int64_t v) {
    for (auto& level : levels_) {
      uint64_t& word = level[v >> 6];
      word &= ~(uint64_t{1} << (v & 63));
      if (word != 0) return;
      v >>= 6;
    }
  }

  // Smallest set value >= v, or -1.
  int64_t next(int64_t v) const {
    size_t depth = 0;
    // Climb until a word holds a set bit at or after the position.
    while (true) {
      if (depth == levels_.size()) return -1;
      const auto& level = levels_[depth];
      size_t w = static_cast<size_t>(v >> 6);
      if (w >= level.size()) return -1;
      uint64_t bits = level[w] & (~uint64_t{0} << (v & 63));
      if (bits != 0) {
        v = (static_cast<int64_t>(w) << 6) | __builtin_ctzll(bits);
        break;
      }
      v = static_cast<int64_t>(w) + 1;
      ++depth;
    }
    // Descend through the lowest set bits.
    while (depth > 0) {
      --depth;
      uint64_t bits = levels_[depth][static_cast<size_t>(v)];
      v = (v << 6) | __builtin_ctzll(bits);
    }
    return v;
  }

 private:
  std::vector<std::vector<uint64_t>> levels_;
};

}  // namespace

PackResult best_fit_decreasing(const int64_t* lengths, int64_t n, int64_t capacity) {
  if (capacity <= 0) throw std::invalid_argument("max_tokens must be positive, got " + std::to_string(capacity));
  if (capacity > (int64_t{1} << 26))
    throw std::invalid_argument("max_tokens " + std::to_string(capacity) + " exceeds the packer's limit of 2^26");
  for (int64_t i = 0; i < n; ++i) {
    if (lengths[i] < 0 || lengths[i] > capacity)
      throw std::invalid_argument("item " + std::to_string(i) + " has length " + std::to_string(lengths[i]) +
                                  ", outside [0, " + std::to_string(capacity) + "]");
  }

  // Counting sort: longest first, ties by lower id (stable). by_length[k] = k-th item in that order.
  std::vector<int64_t> first(static_cast<size_t>(capacity) + 2, 0);  // first[C - len] = start of that length
  for (int64_t i = 0; i < n; ++i) ++first[static_cast<size_t>(capacity - lengths[i]) + 1];
  for (size_t k = 1; k < first.size(); ++k) first[k] += first[k - 1];
  std::vector<int64_t> by_length(static_cast<size_t>(n));
  {
    std::vector<int64_t> cursor(first.begin(), first.end() - 1);
    for (int64_t i = 0; i < n; ++i) by_length[static_cast<size_t>(cursor[static_cast<size_t>(capacity - lengths[i])]++)] = i;
  }

  // Bins with the same remaining capacity form a LIFO list: head[c] -> bin -> next_bin[bin].
  std::vector<int32_t> head(static_cast<size_t>(capacity) + 1, -1);
  std::vector<int32_t> next_bin;
  std::vector<int32_t> bin_of(static_cast<size_t>(n));  // bin of the k-th item in by_length order
  SuccessorSet nonempty(capacity + 1);

  int64_t k = 0;
  for (int64_t len = capacity; len >= 0; --len) {
    for (int64_t end = first[static_cast<size_t>(capacity - len) + 1]; k < end; ++k) {
      int64_t cap = nonempty.next(len);
      int32_t bin;
      if (cap < 0) {
        if (next_bin.size() >= static_cast<size_t>(INT32_MAX)) throw std::length_error("too many bins");
        bin = static_cast<int32_t>(next_bin.size());
        next_bin.push_back(-1);
        cap = capacity;
      } else {
        bin = head[static_cast<size_t>(cap)];
        head[static_cast<size_t>(cap)] = next_bin[static_cast<size_t>(bin)];
        if (head[static_cast<size_t>(cap)] < 0) nonempty.clear(cap);
      }
      int64_t left = cap - len;
      if (head[static_cast<size_t>(left)] < 0) nonempty.set(left);
      next_bin[static_cast<size_t>(bin)] = head[static_cast<size_t>(left)];
      head[static_cast<size_t>(left)] = bin;
      bin_of[static_cast<size_t>(k)] = bin;
    }
  }

  // Group items by bin, keeping placement order within a bin.
  PackResult result;
  size_t n_bins = next_bin.size();
  result.bin_starts.assign(n_bins + 1, 0);
  for (int32_t b : bin_of) ++result.bin_starts[static_cast<size_t>(b) + 1];
  for (size_t b = 1; b <= n_bins; ++b) result.bin_starts[b] += result.bin_starts[b - 1];
  std::vector<int64_t> fill(result.bin_starts.begin(), result.bin_starts.end() - 1);
  result.items.resize(static_cast<size_t>(n));
  for (size_t j = 0; j < static_cast<size_t>(n); ++j) result.items[static_cast<size_t>(fill[static_cast<size_t>(bin_of[j])]++)] = by_length[j];
  return result;
}

}  // namespace mathforge
