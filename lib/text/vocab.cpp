#include "lib/text/vocab.hpp"

#include <algorithm>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "lib/numerics/error.hpp"

namespace qkv {

namespace {
const std::vector<std::string>& special_tokens() {
  static const std::vector<std::string> specials = {"<pad>", "<bos>", "<eos>", "<unk>"};
  return specials;
}
}  // namespace

Vocab::Vocab() : Vocab(special_tokens()) {}

Vocab::Vocab(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    const bool inserted = ids_.emplace(tokens_[i], static_cast<std::int64_t>(i)).second;
    check_arg(inserted, "Vocab", [&] { return "token '" + tokens_[i] + "' appears twice"; });
  }
}

Vocab::Vocab(std::span<const Tokens> sentences, const VocabOptions& options) {
  std::map<std::string, std::size_t> counts;  // ordered: ties below resolve in byte order
  for (const Tokens& sentence : sentences) {
    const std::size_t n = options.max_tokens == 0 ? sentence.size()
                                                  : std::min(sentence.size(), options.max_tokens);
    for (std::size_t i = 0; i < n; ++i) ++counts[sentence[i]];
  }
  for (const std::string& special : special_tokens()) counts.erase(special);
  std::vector<std::pair<std::string, std::size_t>> kept;
  for (auto& [token, count] : counts)
    if (count >= options.min_freq) kept.emplace_back(token, count);
  // Stable sort on the count alone keeps the map's alphabetical order among ties.
  std::stable_sort(kept.begin(), kept.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::string> tokens = special_tokens();
  for (auto& entry : kept) tokens.push_back(entry.first);
  *this = Vocab(std::move(tokens));
}

std::int64_t Vocab::id(const std::string& token) const {
  const auto it = ids_.find(token);
  return it == ids_.end() ? unk_id : it->second;
}

bool Vocab::contains(const std::string& token) const { return ids_.contains(token); }

const std::string& Vocab::token(std::int64_t id) const {
  check_arg(id >= 0 && static_cast<std::size_t>(id) < tokens_.size(), "Vocab::token",
            [&] { return "id " + std::to_string(id) + " is outside [0, " + std::to_string(tokens_.size()) + ")"; });
  return tokens_[static_cast<std::size_t>(id)];
}

std::vector<std::int64_t> Vocab::encode(const Tokens& tokens) const {
  std::vector<std::int64_t> ids;
  ids.reserve(tokens.size());
  for (const std::string& token : tokens) ids.push_back(id(token));
  return ids;
}

Tokens Vocab::decode(std::span<const std::int64_t> ids) const {
  Tokens tokens;
  for (const std::int64_t id : ids) {
    if (id == eos_id) break;
    if (id == pad_id || id == bos_id) continue;
    tokens.push_back(token(id));
  }
  return tokens;
}

nlohmann::json Vocab::to_json() const {
  return {{"format", "qkv.vocab"}, {"version", 1}, {"tokens", tokens_}};
}

Vocab Vocab::from_json(const nlohmann::json& json) {
  check_arg(json.is_object() && json.contains("format") && json["format"] == "qkv.vocab",
            "Vocab::from_json", "not a qkv vocabulary (expected \"format\": \"qkv.vocab\")");
  check_arg(json.contains("version") && json["version"] == 1, "Vocab::from_json",
            [&] { return "unsupported version " + (json.contains("version") ? json["version"].dump() : "(none)"); });
  check_arg(json.contains("tokens") && json["tokens"].is_array(), "Vocab::from_json",
            "\"tokens\" must be an array of strings");
  std::vector<std::string> tokens;
  for (const auto& token : json["tokens"]) {
    check_arg(token.is_string(), "Vocab::from_json", [&] { return "token " + token.dump() + " is not a string"; });
    tokens.push_back(token.get<std::string>());
  }
  const auto& specials = special_tokens();
  check_arg(tokens.size() >= specials.size() && std::equal(specials.begin(), specials.end(), tokens.begin()),
            "Vocab::from_json", "the first tokens must be <pad>, <bos>, <eos>, <unk>");
  return Vocab(std::move(tokens));
}

void Vocab::save(const std::filesystem::path& path) const {
  std::ofstream file(path);
  check_arg(static_cast<bool>(file), "Vocab::save", [&] { return "cannot open '" + path.string() + "' for writing"; });
  file << to_json().dump(1) << '\n';
  check_arg(static_cast<bool>(file), "Vocab::save", [&] { return "failed writing '" + path.string() + "'"; });
}

Vocab Vocab::load(const std::filesystem::path& path) {
  std::ifstream file(path);
  check_arg(static_cast<bool>(file), "Vocab::load", [&] { return "cannot open '" + path.string() + "'"; });
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(file);
    return from_json(json);
  } catch (const nlohmann::json::exception& e) {
    throw ParseError(path.string() + ": " + e.what());
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
}

}  // namespace qkv
