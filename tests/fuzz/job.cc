// Fuzz target: the job file (common/job.h, ParseJobYaml) and the --key value flags (SetJobKey),
// what a user or a site's operator hands every binary. The input's first line starting with
// "--" splits it: the YAML before it, then one "key=value" flag per line. Every input must give a
// job or an error, and a parsed job must validate or refuse without crashing. Built with the
// common library alone: the keys of components in other libraries (strategies, models) are
// unknown here and refused as such, as a build without them would.

#include <sstream>
#include <string>

#include "common/job.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find("\n--");
  auto job = allround::ParseJobYaml(input.substr(0, split), "fuzz.yaml");
  if (!job.ok()) return 0;
  if (split != std::string::npos) {
    std::istringstream flags(input.substr(split + 3));
    std::string line;
    while (std::getline(flags, line)) {
      const size_t eq = line.find('=');
      if (eq == std::string::npos) continue;
      (void)allround::SetJobKey(*job, line.substr(0, eq), line.substr(eq + 1));
    }
  }
  (void)allround::ValidateJob(*job);
  (void)allround::ResolvedRunDir(*job);
  return 0;
}
