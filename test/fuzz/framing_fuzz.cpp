// SPDX-License-Identifier: MIT
// libFuzzer target: read_until's frame search, fed in random chunks, against a plain search.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../../lib/framing.hpp"

using netloop::detail::find_frame;
using netloop::detail::frame_search;

namespace {

void check(bool ok) {
    if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4) return 0;
    // Header: delimiter length (1-4), max_length (0-1023), then the delimiter, then the stream.
    std::size_t delimiter_size = 1 + data[0] % 4;
    std::size_t max_length = (static_cast<std::size_t>(data[1]) << 8 | data[2]) % 1024;
    data += 3;
    size -= 3;
    if (size < delimiter_size) return 0;
    std::string delimiter(reinterpret_cast<const char*>(data), delimiter_size);
    data += delimiter_size;
    size -= delimiter_size;

    std::string buffer;
    std::size_t searched = 0;
    std::size_t at = 0;
    while (at < size) {
        // Each chunk's length comes from the stream itself, so chunking is fuzzed too.
        std::size_t chunk = 1 + data[at] % 64;
        chunk = std::min(chunk, size - at);
        buffer.append(reinterpret_cast<const char*>(data + at), chunk);
        at += chunk;
        for (;;) {
            auto r = find_frame(buffer, searched, delimiter, max_length);
            auto reference = buffer.find(delimiter);
            if (r.result == frame_search::found) {
                check(reference == r.length && r.length <= max_length);
                buffer.erase(0, r.length + delimiter.size());
                searched = 0;
                continue;
            }
            if (r.result == frame_search::too_large) {
                check((reference != std::string::npos && reference > max_length) ||
                      (reference == std::string::npos &&
                       buffer.size() >= max_length + delimiter.size()));
                buffer.clear();  // the caller skips what is buffered
                searched = 0;
                break;
            }
            check(reference == std::string::npos);
            check(buffer.size() < max_length + delimiter.size());  // fill() never needs more
            check(r.searched <= buffer.size());
            searched = r.searched;
            break;
        }
    }
    return 0;
}
