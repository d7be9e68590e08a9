// libFuzzer target: TSV corpora (lib/corpus.*): read_tsv under each option, then what
// qkv-train does next with the pairs (splits and vocabularies).
#include <cstdlib>
#include <sstream>

#include "fuzz_support.hpp"
#include "lib/text/corpus.hpp"
#include "lib/numerics/error.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qkv::fuzz::silence_logging();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // The first byte picks the options, the rest is the file.
  const std::uint8_t flags = data[0];
  const qkv::TsvOptions options{.reverse = (flags & 1) != 0,
                                .bad_lines = (flags & 2) != 0 ? qkv::BadLines::strict : qkv::BadLines::skip,
                                .drop_extra_columns = (flags & 4) != 0,
                                .max_lines = static_cast<std::size_t>(flags >> 5)};
  std::istringstream in(std::string(qkv::fuzz::as_text(data + 1, size - 1)));
  try {
    const qkv::TsvCorpus corpus = qkv::read_tsv(in, "fuzz.tsv", options);
    if (corpus.pairs.size() != corpus.line_numbers.size()) std::abort();
    for (const qkv::SentencePair& pair : corpus.pairs)
      if (pair.source.empty() || pair.target.empty()) std::abort();
    const qkv::Dataset dataset = qkv::split_by_source(corpus.pairs, 1 + (flags >> 3) % 4);
    (void)qkv::d2l_vocabs(dataset);
    const qkv::Vocabs vocabs = qkv::build_vocabs(corpus.pairs);
    for (const qkv::SentencePair& pair : corpus.pairs)
      for (const std::string& token : pair.source)  // every training token is in its vocabulary
        if (!vocabs.source.contains(token)) std::abort();
  } catch (const qkv::Error&) {
  }
  return 0;
}
