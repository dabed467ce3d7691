// Word n-gram hashing and MinHash signatures (see minhash.hpp).
#include "minhash.hpp"

#include <algorithm>
#include <limits>

namespace mathforge {
namespace {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Hash of words[i, i+n): a polynomial combination, mixed so that nearby windows spread out.
inline uint64_t window_hash(const std::vector<uint64_t>& words, size_t i, size_t n) {
  uint64_t h = 0x84222325CBF29CE4ULL ^ n;
  for (size_t j = 0; j < n; ++j) h = splitmix64(h * 0x100000001B3ULL + words[i + j]);
  return h;
}

}  // namespace

std::vector<uint64_t> word_hashes(std::string_view text) {
  std::vector<uint64_t> out;
  uint64_t h = 0xCBF29CE484222325ULL;
  bool in_word = false;
  for (unsigned char c : text) {
    bool keep = c >= 128 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (keep) {
      if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c - 'A' + 'a');
      h = (h ^ c) * 0x100000001B3ULL;  // FNV-1a
      in_word = true;
    } else if (in_word) {
      out.push_back(splitmix64(h));
      h = 0xCBF29CE484222325ULL;
      in_word = false;
    }
  }
  if (in_word) out.push_back(splitmix64(h));
  return out;
}

std::vector<uint64_t> ngram_hashes(std::string_view text, int n) {
  std::vector<uint64_t> words = word_hashes(text);
  std::vector<uint64_t> out;
  if (n <= 0 || words.size() < static_cast<size_t>(n)) return out;
  out.reserve(words.size() - n + 1);
  for (size_t i = 0; i + n <= words.size(); ++i) out.push_back(window_hash(words, i, n));
  return out;
}

void minhash_signature(std::string_view text, int n, int num_perm, uint64_t seed, uint64_t* out) {
  std::fill(out, out + num_perm, std::numeric_limits<uint64_t>::max());
  std::vector<uint64_t> words = word_hashes(text);
  if (words.empty()) return;
  size_t width = std::min(words.size(), static_cast<size_t>(std::max(n, 1)));
  std::vector<uint64_t> salts(num_perm);
  for (int p = 0; p < num_perm; ++p) salts[p] = splitmix64(seed * 0x9E3779B97F4A7C15ULL + p + 1);
  for (size_t i = 0; i + width <= words.size(); ++i) {
    uint64_t g = window_hash(words, i, width);
    for (int p = 0; p < num_perm; ++p) out[p] = std::min(out[p], splitmix64(g ^ salts[p]));
  }
}

}  // namespace mathforge
