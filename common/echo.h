#ifndef ALLROUND_COMMON_ECHO_H_
#define ALLROUND_COMMON_ECHO_H_

// Quoting what a peer sent back to it, or into a log, without letting the peer choose how much:
// an error that repeats a 10 MB site name is 10 MB the server builds, logs and sends for free.

#include <cstddef>
#include <string>
#include <string_view>

namespace allround {

// At most `max_chars` characters of `text`; bytes outside printable ASCII become '?'. A cut text
// ends in "...(N bytes)" so the reader knows it was cut and how long it was.
std::string Echo(std::string_view text, size_t max_chars);

}  // namespace allround

#endif  // ALLROUND_COMMON_ECHO_H_
