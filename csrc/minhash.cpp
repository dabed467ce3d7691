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

namespace {

// Union-find over positions; the root of a set is always its smallest member.
struct EarliestUnion {
  std::vector<int64_t> parent;
  explicit EarliestUnion(int64_t n) : parent(n) {
    for (int64_t i = 0; i < n; ++i) parent[i] = i;
  }
  int64_t find(int64_t i) {
    while (parent[i] != i) {
      parent[i] = parent[parent[i]];  // path halving
      i = parent[i];
    }
    return i;
  }
  void join(int64_t a, int64_t b) {
    int64_t ra = find(a), rb = find(b);
    if (ra != rb) parent[std::max(ra, rb)] = std::min(ra, rb);
  }
};

struct Keyed {
  uint64_t key;  // hash of the band's values (ties are resolved on the values themselves)
  int64_t pos;
};

}  // namespace

std::vector<int64_t> near_duplicate_roots(const uint32_t* sig, int num_perm, const int64_t* rows, int64_t m,
                                          int bands, double threshold) {
  EarliestUnion sets(m);
  const int width = num_perm / bands;
  auto band_of = [&](int64_t pos, int b) { return sig + rows[pos] * num_perm + static_cast<int64_t>(b) * width; };
  std::vector<Keyed> keyed(m);
  for (int b = 0; b < bands; ++b) {
    for (int64_t i = 0; i < m; ++i) {
      const uint32_t* v = band_of(i, b);
      uint64_t h = 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(b + 1);
      for (int j = 0; j < width; ++j) h = splitmix64(h ^ v[j]);
      keyed[i] = {h, i};
    }
    // order: key, then the band values (so equal keys of different bands never mix), then position
    std::sort(keyed.begin(), keyed.end(), [&](const Keyed& x, const Keyed& y) {
      if (x.key != y.key) return x.key < y.key;
      const uint32_t *a = band_of(x.pos, b), *c = band_of(y.pos, b);
      for (int j = 0; j < width; ++j)
        if (a[j] != c[j]) return a[j] < c[j];
      return x.pos < y.pos;
    });
    for (int64_t s = 0; s < m;) {
      const uint32_t* head_band = band_of(keyed[s].pos, b);
      int64_t e = s + 1;
      while (e < m && keyed[e].key == keyed[s].key && std::equal(head_band, head_band + width, band_of(keyed[e].pos, b)))
        ++e;
      const int64_t head = keyed[s].pos;  // the bucket's earliest member
      const uint32_t* hs = sig + rows[head] * num_perm;
      for (int64_t k = s + 1; k < e; ++k) {
        const uint32_t* ms = sig + rows[keyed[k].pos] * num_perm;
        int equal = 0;
        for (int j = 0; j < num_perm; ++j) equal += hs[j] == ms[j];
        if (static_cast<double>(equal) / num_perm >= threshold) sets.join(keyed[k].pos, head);
      }
      s = e;
    }
  }
  std::vector<int64_t> roots(m);
  for (int64_t i = 0; i < m; ++i) roots[i] = sets.find(i);
  return roots;
}

}  // namespace mathforge
