#include "common/registry.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace allround {
namespace {

struct Registry {
  std::map<std::pair<std::string, std::string>, std::unique_ptr<ComponentInfo>> components;  // (kind, name)
  std::map<std::string, ComponentKey> keys;
  std::map<std::string, std::vector<std::string>> readers;  // key -> component names
};

// Built on first use, so registrations from any translation unit's static initializers find it.
Registry& Get() {
  static Registry* r = new Registry;
  return *r;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "allround: registry: %s\n", what.c_str());
  std::abort();
}

std::string NumberText(double v) {
  char text[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, v);
    if (std::strtod(text, nullptr) == v) break;
  }
  return text;
}

}  // namespace

ComponentKey NumberKey(std::string key, double default_value, std::string help, double lo, double hi) {
  ComponentKey k{key, NumberText(default_value), std::move(help), nullptr};
  k.check = [key, lo, hi](const std::string& v) -> absl::Status {
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || errno != 0 || !std::isfinite(d) || d < lo || d > hi) {
      return absl::InvalidArgumentError(absl::StrCat("job key '", key, "': bad value '", v, "' (a number between ",
                                                     lo, " and ", hi, ")"));
    }
    return absl::OkStatus();
  };
  return k;
}

ComponentKey IntegerKey(std::string key, int64_t default_value, std::string help, int64_t lo, int64_t hi) {
  ComponentKey k{key, absl::StrCat(default_value), std::move(help), nullptr};
  k.check = [key, lo, hi](const std::string& v) -> absl::Status {
    char* end = nullptr;
    errno = 0;
    const long long i = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || i < lo || i > hi) {
      return absl::InvalidArgumentError(absl::StrCat("job key '", key, "': bad value '", v, "' (an integer between ",
                                                     lo, " and ", hi, ")"));
    }
    return absl::OkStatus();
  };
  return k;
}

ComponentKey ChoiceKey(std::string key, std::string default_value, std::string help, std::vector<std::string> allowed) {
  ComponentKey k{key, std::move(default_value), std::move(help), nullptr};
  k.check = [key, allowed](const std::string& v) -> absl::Status {
    if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("job key '", key, "': bad value '", v, "' (one of: ", absl::StrJoin(allowed, ", "), ")"));
  };
  return k;
}

ComponentKey BooleanKey(std::string key, bool default_value, std::string help) {
  ComponentKey k{key, default_value ? "true" : "false", std::move(help), nullptr};
  k.check = [key](const std::string& v) -> absl::Status {
    if (ParseBoolText(v).has_value()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("job key '", key, "': bad value '", v, "' (true or false)"));
  };
  return k;
}

ComponentKey IntegerListKey(std::string key, const std::vector<int64_t>& default_value, std::string help, int64_t lo,
                            int64_t hi) {
  ComponentKey k{key, absl::StrJoin(default_value, ","), std::move(help), nullptr};
  k.check = [key, lo, hi](const std::string& v) -> absl::Status {
    const auto bad = [&] {
      return absl::InvalidArgumentError(absl::StrCat("job key '", key, "': bad value '", v,
                                                     "' (one or more comma-separated integers between ", lo, " and ",
                                                     hi, ")"));
    };
    const auto list = ParseIntegerListText(v);
    if (!list.has_value() || list->empty()) return bad();
    for (int64_t i : *list) {
      if (i < lo || i > hi) return bad();
    }
    return absl::OkStatus();
  };
  return k;
}

std::optional<bool> ParseBoolText(const std::string& v) {
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return std::nullopt;
}

std::optional<std::vector<int64_t>> ParseIntegerListText(const std::string& v) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
    const std::string item(absl::StripAsciiWhitespace(part));
    char* end = nullptr;
    errno = 0;
    const long long i = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || errno != 0) return std::nullopt;
    out.push_back(static_cast<int64_t>(i));
  }
  return out;
}

bool RegisterComponent(ComponentInfo info) {
  Registry& r = Get();
  for (const ComponentKey& k : info.keys) {
    auto [it, added] = r.keys.emplace(k.key, k);
    if (!added && it->second.default_value != k.default_value) {
      Fail(absl::StrCat(info.kind, " '", info.name, "' registers key ", k.key, " with default ", k.default_value,
                        ", another component with ", it->second.default_value));
    }
    r.readers[k.key].push_back(info.name);
  }
  const auto id = std::make_pair(info.kind, info.name);
  if (r.components.count(id) > 0) Fail(absl::StrCat(info.kind, " '", info.name, "' is registered twice"));
  r.components[id] = std::make_unique<ComponentInfo>(std::move(info));
  return true;
}

std::vector<const ComponentInfo*> Components(const std::string& kind) {
  std::vector<const ComponentInfo*> out;
  for (const auto& [id, info] : Get().components) {
    if (id.first == kind) out.push_back(info.get());
  }
  return out;
}

std::vector<std::string> ComponentNames(const std::string& kind) {
  std::vector<std::string> out;
  for (const ComponentInfo* c : Components(kind)) out.push_back(c->name);
  return out;
}

bool ComponentHasTrait(const std::string& kind, const std::string& name, const std::string& trait) {
  const ComponentInfo* info = FindComponent(kind, name);
  return info != nullptr && std::find(info->traits.begin(), info->traits.end(), trait) != info->traits.end();
}

const ComponentInfo* FindComponent(const std::string& kind, const std::string& name) {
  auto it = Get().components.find({kind, name});
  return it == Get().components.end() ? nullptr : it->second.get();
}

const ComponentKey* FindComponentKey(const std::string& key) {
  auto it = Get().keys.find(key);
  return it == Get().keys.end() ? nullptr : &it->second;
}

std::vector<const ComponentKey*> ComponentKeys() {
  std::vector<const ComponentKey*> out;
  for (const auto& [name, k] : Get().keys) out.push_back(&k);
  return out;
}

std::string ComponentsReading(const std::string& key) {
  auto it = Get().readers.find(key);
  return it == Get().readers.end() ? "" : absl::StrJoin(it->second, ", ");
}

absl::Status UnknownComponentError(const std::string& kind, const std::string& noun, const std::string& name) {
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", noun, " '", name, "' (known: ", absl::StrJoin(ComponentNames(kind), ", "), ")"));
}

}  // namespace allround
