// Metrics: token accuracy and exact match by hand, corpus BLEU-4 on cases worked out on paper
// and, when /usr/bin/python3 has NLTK, against nltk.translate.bleu_score.corpus_bleu.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/numerics/error.hpp"
#include "lib/text/metrics.hpp"
#include "lib/numerics/rng.hpp"

using namespace qkv;

namespace {

using References = std::vector<std::vector<std::string>>;

double bleu(const std::vector<std::string>& hypotheses, const References& references) {
  return corpus_bleu(hypotheses, references).bleu;
}

}  // namespace

TEST_CASE("metrics: token accuracy and exact match ignore padding") {
  const IndexArray targets = {{5, 6, 7, 0}, {8, 9, 0, 0}};
  const IndexArray predictions = {{5, 1, 7, 3}, {8, 9, 1, 1}};  // 4 of 5 real tokens right
  CHECK(token_accuracy(predictions, targets) == doctest::Approx(0.8).epsilon(1e-15));
  CHECK(exact_match(predictions, targets) == 0.5);  // row 1 matches wherever the target is real
  CHECK(token_accuracy(targets, targets) == 1.0);
  CHECK(exact_match(targets, targets) == 1.0);
  CHECK(token_accuracy(predictions, targets, /*pad_id=*/-1) == 0.5);  // now every position counts: 4 of 8

  const IndexArray wrong_shape = {{5, 6, 7}, {8, 9, 0}};
  CHECK_THROWS_WITH_AS(token_accuracy(wrong_shape, targets),
                       "token_accuracy: predictions [2, 3] and targets [2, 4] must be the same [B, T] shape",
                       ShapeError);
  CHECK_THROWS_AS(exact_match(wrong_shape, targets), ShapeError);
  const IndexArray all_pad = {{0, 0}};
  CHECK_THROWS_WITH_AS(token_accuracy(all_pad, all_pad), "token_accuracy: every target position is padding", Error);

  const std::vector<Tokens> hypotheses = {{"a", "b"}, {"c"}, {"d"}};
  const std::vector<std::vector<Tokens>> references = {{{"x"}, {"a", "b"}}, {{"c", "c"}}, {{"d"}}};
  CHECK(exact_match(hypotheses, references) == doctest::Approx(2.0 / 3));
}

TEST_CASE("metrics: BLEU of a perfect match is 100") {
  const auto score = corpus_bleu(std::vector<std::string>{"the cat sat on the mat", "a b c d"},
                                 References{{"the cat sat on the mat"}, {"a b c d"}});
  CHECK(score.bleu == doctest::Approx(100).epsilon(1e-15));
  CHECK(score.brevity_penalty == 1.0);
  CHECK(score.matches == std::array<std::size_t, 4>{10, 8, 6, 4});
  CHECK(score.totals == std::array<std::size_t, 4>{10, 8, 6, 4});
}

TEST_CASE("metrics: BLEU with clipping and brevity penalty, worked out by hand") {
  // hypothesis a b a b c d (c = 6), reference a b c d e f g (r = 7)
  //   1-grams: a2 b2 c d, clipped to a1 b1 c1 d1           -> 4/6
  //   2-grams: ab ab ba bc cd; ab clipped to 1, ba absent  -> 3/5
  //   3-grams: aba bab abc bcd                             -> 2/4
  //   4-grams: abab babc abcd                              -> 1/3
  //   BP = exp(1 - 7/6); BLEU = 100 BP (4/6 3/5 2/4 1/3)^(1/4) = 100 exp(-1/6) (1/15)^(1/4)
  const auto score = corpus_bleu(std::vector<std::string>{"a b a b c d"}, References{{"a b c d e f g"}});
  CHECK(score.matches == std::array<std::size_t, 4>{4, 3, 2, 1});
  CHECK(score.totals == std::array<std::size_t, 4>{6, 5, 4, 3});
  CHECK(score.hypothesis_length == 6);
  CHECK(score.reference_length == 7);
  CHECK(score.brevity_penalty == doctest::Approx(std::exp(-1.0 / 6)).epsilon(1e-15));
  CHECK(score.bleu == doctest::Approx(100 * std::exp(-1.0 / 6) * std::pow(1.0 / 15, 0.25)).epsilon(1e-14));
  CHECK(score.bleu == doctest::Approx(43.012508513132625).epsilon(1e-14));  // NLTK 3.8 * 100

  // Corpus level sums counts, not sentence scores: add a perfect "a b c d".
  //   p = 8/10, 6/8, 4/6, 2/4; c = 10, r = 11; BLEU = 100 exp(-0.1) (1/5)^(1/4)
  CHECK(bleu({"a b c d", "a b a b c d"}, {{"a b c d"}, {"a b c d e f g"}}) ==
        doctest::Approx(100 * std::exp(-0.1) * std::pow(0.2, 0.25)).epsilon(1e-14));
}

TEST_CASE("metrics: BLEU with several references") {
  // hypothesis a b c d e; references a b x d e and a b c d y z
  //   each n-gram is clipped by its largest count in one reference: de comes from the first,
  //   bc and cd from the second -> 5/5, 4/4, then abc bcd of abc bcd cde -> 2/3, abcd -> 1/2.
  //   closest reference length 5 = c -> BP = 1. BLEU = 100 (1/3)^(1/4)
  CHECK(bleu({"a b c d e"}, {{"a b x d e", "a b c d y z"}}) ==
        doctest::Approx(100 * std::pow(1.0 / 3, 0.25)).epsilon(1e-14));
  // Reference lengths 4 and 6 are equally close to 5: the shorter counts, so c > r and BP = 1.
  // (Taking 6 would give BP = exp(1 - 6/5) and 81.87.)
  const auto tie = corpus_bleu(std::vector<std::string>{"a b c d e"}, References{{"a b c d e f", "a b c d"}});
  CHECK(tie.reference_length == 4);
  CHECK(tie.bleu == doctest::Approx(100).epsilon(1e-15));
  // One good reference among bad ones is enough.
  CHECK(bleu({"x y z w"}, {{"a b c d", "x y z w", "q"}}) == doctest::Approx(100));
}

TEST_CASE("metrics: BLEU is 0 when any n-gram precision is 0, without smoothing") {
  const auto swapped = corpus_bleu(std::vector<std::string>{"a b d c"}, References{{"a b c d"}});
  CHECK(swapped.precisions[0] == 1.0);   // every word is right ...
  CHECK(swapped.precisions[3] == 0.0);   // ... but no 4-gram is
  CHECK(swapped.bleu == 0.0);
  CHECK(bleu({"a b c"}, {{"a b c"}}) == 0.0);  // no 4-gram at all in the corpus
  CHECK(bleu({""}, {{"a b c d"}}) == 0.0);
  CHECK(corpus_bleu(std::vector<std::string>{""}, References{{"a b c d"}}).brevity_penalty == 0.0);
}

TEST_CASE("metrics: a hypothesis shorter than n adds no n-grams (unlike NLTK's max(1, count))") {
  // "a b" and "a b c d e" against themselves: p_3 = 3/3, p_4 = 2/2, BLEU 100. NLTK 3.8 counts
  // one 3-gram and one 4-gram for "a b" (p_3 = 3/4, p_4 = 2/3) and reports 100 (1/2)^(1/4) = 84.09.
  const auto score = corpus_bleu(std::vector<std::string>{"a b", "a b c d e"}, References{{"a b"}, {"a b c d e"}});
  CHECK(score.totals == std::array<std::size_t, 4>{7, 5, 3, 2});
  CHECK(score.bleu == doctest::Approx(100).epsilon(1e-15));
}

TEST_CASE("metrics: BLEU input errors") {
  CHECK_THROWS_WITH_AS(bleu({"a", "b"}, {{"a"}}), "corpus_bleu: 2 hypotheses but 1 reference sets", Error);
  CHECK_THROWS_WITH_AS(bleu({"a"}, {{}}), "corpus_bleu: hypothesis 0 has no reference", Error);
}

TEST_CASE("metrics: BLEU agrees with NLTK corpus_bleu on random corpora") {
  if (std::system("/usr/bin/python3 -c 'import nltk' >/dev/null 2>&1") != 0) {
    MESSAGE("SKIPPED: /usr/bin/python3 has no nltk; BLEU is checked by the hand-worked cases only");
    return;
  }
  const auto directory = std::filesystem::temp_directory_path();
  const auto input = directory / "qkv_test_bleu_input.json";
  const auto output = directory / "qkv_test_bleu_output.json";
  const auto script = directory / "qkv_test_bleu.py";
  std::ofstream(script) << "import json, sys, warnings\n"
                           "from nltk.translate.bleu_score import corpus_bleu\n"
                           "warnings.simplefilter('ignore')\n"
                           "cases = json.load(open(sys.argv[1]))\n"
                           "scores = [100 * corpus_bleu([[r.split() for r in refs] for refs in c['references']],\n"
                           "                            [h.split() for h in c['hypotheses']]) for c in cases]\n"
                           "json.dump(scores, open(sys.argv[2], 'w'))\n";
  // Few distinct words and short sentences, so that matches of every order are common.
  Rng rng(2024);
  const auto sentence = [&rng](std::size_t min_length, std::size_t max_length) {
    const std::size_t length = min_length + rng.below(max_length - min_length + 1);
    std::string text;
    for (std::size_t i = 0; i < length; ++i) {
      if (i > 0) text += ' ';
      text += static_cast<char>('a' + rng.below(4));
    }
    return text;
  };
  nlohmann::json cases = nlohmann::json::array();
  std::vector<double> ours;
  for (int c = 0; c < 20; ++c) {
    std::vector<std::string> hypotheses;
    References references;
    for (int i = 0; i < 30; ++i) {
      // At least 4 words: NLTK counts max(1, n-grams) for a shorter hypothesis (see metrics.hpp).
      hypotheses.push_back(sentence(4, 12));
      references.emplace_back();
      const std::size_t count = 1 + rng.below(3);
      for (std::size_t r = 0; r < count; ++r) references.back().push_back(sentence(3, 14));
    }
    cases.push_back({{"hypotheses", hypotheses}, {"references", references}});
    ours.push_back(bleu(hypotheses, references));
  }
  std::ofstream(input) << cases.dump();
  const std::string command = "/usr/bin/python3 " + script.string() + " " + input.string() + " " + output.string();
  REQUIRE(std::system(command.c_str()) == 0);
  const auto nltk_scores = nlohmann::json::parse(std::ifstream(output)).get<std::vector<double>>();
  REQUIRE(nltk_scores.size() == ours.size());
  std::size_t nonzero = 0;
  for (std::size_t c = 0; c < ours.size(); ++c) {
    CAPTURE(c);
    CHECK(ours[c] == doctest::Approx(nltk_scores[c]).epsilon(1e-12).scale(1e-12));
    nonzero += ours[c] > 0;
  }
  CHECK(nonzero >= 15);  // mostly nonzero scores (with this seed one corpus has p_4 = 0)
  for (const auto& path : {input, output, script}) std::filesystem::remove(path);
}
