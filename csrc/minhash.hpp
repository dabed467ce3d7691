// Word n-gram hashing and MinHash signatures for near-duplicate removal and decontamination.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace mathforge {

// 64-bit hashes of the normalized words of `text`: ASCII letters are lower-cased, ASCII digits kept,
// any other ASCII byte separates words, and non-ASCII bytes (UTF-8) are kept as part of words.
std::vector<uint64_t> word_hashes(std::string_view text);

// One hash per window of `n` consecutive words (empty when the text has fewer than `n` words).
std::vector<uint64_t> ngram_hashes(std::string_view text, int n);

// MinHash signature (num_perm values) of the set of word n-grams; texts with fewer than `n` words use
// all their words as one gram, and an empty text gets all-ones. Writes num_perm values to `out`.
void minhash_signature(std::string_view text, int n, int num_perm, uint64_t seed, uint64_t* out);

// Near-duplicate roots by LSH banding + union-find over 32-bit MinHash signatures `sig` [*, num_perm] (row-major).
// The candidates are the signature rows `rows[0..m)`, in priority order (earlier wins). For each of `bands` bands
// of num_perm/bands values, candidates whose band values are equal form a bucket; every other member of a bucket
// is joined to the bucket's earliest member when the fraction of equal signature values of the two is
// >= `threshold`. Returns, per candidate position, the earliest position of its connected component (itself when
// it has no near-duplicate). Deterministic; O(bands * m log m) time, O(m) memory beyond `sig`.
std::vector<int64_t> near_duplicate_roots(const uint32_t* sig, int num_perm, const int64_t* rows, int64_t m,
                                          int bands, double threshold);

}  // namespace mathforge
