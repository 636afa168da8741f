// SPDX-License-Identifier: MIT
// libFuzzer target: the PROXY protocol parser, fed every prefix a reader would see, for
// consistency (a verdict never changes as bytes arrive) and bounds (ASan checks every read).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "../../lib/proxy_protocol.hpp"

using netloop::proxy_protocol;
using netloop::detail::parse_proxy_header;
using netloop::detail::proxy_parse_result;

namespace {

void check(bool ok) {
    if (!ok) std::abort();
}

bool same(const proxy_parse_result& a, const proxy_parse_result& b) {
    const auto& x = a.header;
    const auto& y = b.header;
    return a.status == b.status && x.length == y.length && x.version == y.version &&
           x.command == y.command && x.family == y.family && x.source == y.source &&
           x.destination == y.destination && x.source_unix == y.source_unix &&
           x.destination_unix == y.destination_unix && x.alpn == y.alpn &&
           x.authority == y.authority;
}

// What a prefix said must hold for the whole input it starts.
void consistent(const proxy_parse_result& prefix, std::size_t prefix_size,
                const proxy_parse_result& whole) {
    switch (prefix.status) {
        case proxy_parse_result::need_more:
            check(prefix.needed > prefix_size);
            if (whole.status == proxy_parse_result::done)
                check(whole.header.length >= prefix.needed);
            if (whole.status == proxy_parse_result::need_more) check(whole.needed >= prefix.needed);
            break;
        case proxy_parse_result::invalid:
            check(!prefix.reason.empty());
            check(whole.status == proxy_parse_result::invalid);
            break;
        case proxy_parse_result::done:
            check(prefix.header.length <= prefix_size);
            check(same(prefix, whole));
            break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    // First byte: the versions accepted and the v2 length limit.
    constexpr proxy_protocol versions[] = {proxy_protocol::either, proxy_protocol::v1,
                                           proxy_protocol::v2, proxy_protocol::off};
    constexpr std::size_t limits[] = {netloop::detail::proxy_v2_default_limit,
                                      netloop::detail::proxy_v2_max_length, 16, 64};
    auto accepted = versions[data[0] & 3];
    auto limit = limits[(data[0] >> 2) & 3];
    std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), size - 1);

    auto whole = parse_proxy_header(bytes, accepted, limit);
    switch (whole.status) {
        case proxy_parse_result::need_more:
            check(whole.needed > bytes.size());
            break;
        case proxy_parse_result::invalid:
            check(!whole.reason.empty());
            break;
        case proxy_parse_result::done:
            check(whole.header.length <= bytes.size());
            check(whole.header.length <= limit || whole.header.version == 1);
            check(whole.header.version == 1 ? whole.header.length <= 107
                                            : whole.header.length >= 16);
            break;
    }
    // The prefixes a reader that reads only what it was told it needs would parse...
    for (std::size_t at = 0; at < bytes.size();) {
        auto r = parse_proxy_header(bytes.first(at), accepted, limit);
        consistent(r, at, whole);
        if (r.status != proxy_parse_result::need_more) break;
        at = r.needed;
    }
    // ... and those of one that reads whatever arrives.
    for (std::size_t at : {std::size_t{1}, bytes.size() / 3, bytes.size() / 2, bytes.size() - 1}) {
        if (at >= bytes.size()) continue;
        consistent(parse_proxy_header(bytes.first(at), accepted, limit), at, whole);
    }
    return 0;
}
