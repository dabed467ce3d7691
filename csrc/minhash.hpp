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

}  // namespace mathforge
