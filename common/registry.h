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

#include <functional>
#include <string>
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

struct ComponentInfo {
  std::string kind;  // "strategy", "mode", "model", "loss", "backend"
  std::string name;
  std::string help;
  std::vector<ComponentKey> keys;
};

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

}  // namespace allround

#endif  // ALLROUND_COMMON_REGISTRY_H_
