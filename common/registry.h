#ifndef ALLROUND_COMMON_REGISTRY_H_
#define ALLROUND_COMMON_REGISTRY_H_

// Where components say what they are, beside their own code: each strategy, learning mode, model,
// loss and communicator backend registers its kind, name, help text and the job keys it reads
// (with defaults and validation). Job parsing (common/job.cc) takes the allowed names and those
// keys from here, and --help lists them; each layer keeps its own typed factories next to the
// registration (aggregation::RegisterStrategy, modes::RegisterMode, ...).
//
// Registration runs during static initialization (a `static const bool kRegistered = ...` in the
// component's .cc file), reads afterwards; reads are thread-safe once main() runs. Two components
// of one kind with the same name, or one key registered twice with different defaults, abort at
// start-up (a programmer error, found by any test).

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace allround {

// A job key a component reads ("strategy.server_lr"); components that share a key (several
// strategies read strategy.server_lr) register it with the same default.
struct ComponentKey {
  std::string key;
  std::string default_value;  // as text, as a flag would give it
  std::string help;
  std::function<absl::Status(const std::string& value)> check;  // null: any text
};

// Keys with a range: the text must parse, and lie in [lo, hi]; the error names the key.
ComponentKey NumberKey(std::string key, double default_value, std::string help, double lo, double hi);
ComponentKey IntegerKey(std::string key, int64_t default_value, std::string help, int64_t lo, int64_t hi);
// One of `allowed` ("backbone" or "pixels").
ComponentKey ChoiceKey(std::string key, std::string default_value, std::string help, std::vector<std::string> allowed);
// true or false (1/0 and yes/no are taken too); read it with JobBool (common/job.h).
ComponentKey BooleanKey(std::string key, bool default_value, std::string help);
// One or more comma-separated integers, each in [lo, hi] ("200,200"); read it with JobIntegers.
ComponentKey IntegerListKey(std::string key, const std::vector<int64_t>& default_value, std::string help, int64_t lo,
                            int64_t hi);

// The texts BooleanKey and IntegerListKey take: a bool, a list of integers (no range check); nullopt
// for anything else.
std::optional<bool> ParseBoolText(const std::string& v);
std::optional<std::vector<int64_t>> ParseIntegerListText(const std::string& v);

struct ComponentInfo {
  std::string kind;  // "strategy", "mode", "model", "loss", "backend"
  std::string name;
  std::string help;
  std::vector<ComponentKey> keys;
  // What other components may ask of this one (ComponentHasTrait), e.g. a strategy's
  // "individual_updates": it looks at each site's update, so it cannot run on a secure sum.
  std::vector<std::string> traits;
};

// Whether the component `name` of `kind` was registered with `trait` (false for an unknown one).
bool ComponentHasTrait(const std::string& kind, const std::string& name, const std::string& trait);

// Returns true, to initialize a static.
bool RegisterComponent(ComponentInfo info);

// The registered components of `kind`, by name.
std::vector<const ComponentInfo*> Components(const std::string& kind);
std::vector<std::string> ComponentNames(const std::string& kind);
const ComponentInfo* FindComponent(const std::string& kind, const std::string& name);

// A key some component registered, or null; every such key, sorted.
const ComponentKey* FindComponentKey(const std::string& key);
std::vector<const ComponentKey*> ComponentKeys();
// The names of the components that read `key` ("fedadam, fedyogi").
std::string ComponentsReading(const std::string& key);

// "unknown <noun> '<name>' (known: <the registered names of kind>)".
absl::Status UnknownComponentError(const std::string& kind, const std::string& noun, const std::string& name);

// The factories of one kind, by name: each layer's typed registry (strategies, learning modes,
// models, losses, communicator backends) is one of these, beside its ComponentInfo. Same threading
// rules as above: written during static initialization, read afterwards. Each layer keeps its
// instance in a function-local static, so registration order across files does not matter.
template <typename Entry>
class TypedRegistry {
 public:
  // `kind` as in ComponentInfo ("strategy"); `noun` names it in errors ("learning mode").
  TypedRegistry(std::string kind, std::string noun) : kind_(std::move(kind)), noun_(std::move(noun)) {}

  // Registers `info` under this registry's kind (aborting on a duplicate name, as
  // RegisterComponent does) and its entry. Returns true, to initialize a static.
  bool Register(ComponentInfo info, Entry entry) {
    info.kind = kind_;
    std::string name = info.name;
    RegisterComponent(std::move(info));
    entries_[std::move(name)] = std::move(entry);
    return true;
  }

  // The entry registered as `name`, or null.
  const Entry* Find(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }

  // The entry, or InvalidArgument "unknown <noun> '<name>' (known: a, b)".
  absl::StatusOr<const Entry*> Get(const std::string& name) const {
    if (const Entry* entry = Find(name)) return entry;
    return UnknownComponentError(kind_, noun_, name);
  }

 private:
  std::string kind_, noun_;
  std::map<std::string, Entry> entries_;
};

}  // namespace allround

#endif  // ALLROUND_COMMON_REGISTRY_H_
