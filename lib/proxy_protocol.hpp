// SPDX-License-Identifier: MIT
// parse_proxy_header: HAProxy's PROXY protocol header (v1 text, v2 binary), pure so it can be
// fuzzed and allocation-free so a flood of bad headers costs no heap.
#pragma once

#include <algorithm>
#include <arpa/inet.h>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <sys/socket.h>
#include <sys/un.h>

#include <netloop/address.hpp>
#include <netloop/proxy.hpp>

#include "endpoint.hpp"

namespace netloop::detail {

// The longest v1 line, CRLF included ("PROXY UNKNOWN <39> <39> 65535 65535\r\n").
inline constexpr std::size_t proxy_v1_max_line = 107;
// The shortest headers: "PROXY UNKNOWN\r\n" and a v2 header with no address block.
inline constexpr std::size_t proxy_v1_min_line = 15;
inline constexpr std::size_t proxy_v2_fixed_length = 16;
// What the v2 format can carry (a 16-bit length after the fixed part) ...
inline constexpr std::size_t proxy_v2_max_length = proxy_v2_fixed_length + 65535;
// ... and what a listener accepts unless told otherwise: the 216-byte Unix address block plus
// TLVs (ALPN, authority, a unique ID of at most 128 bytes, TLS details) fit with room to spare.
inline constexpr std::size_t proxy_v2_default_limit = 4096;
// A v2 Unix address: a sun_path as the sender's kernel had it.
inline constexpr std::size_t proxy_unix_path_size = 108;

enum class proxy_command : std::uint8_t {
    local,  // made by the proxy itself (a health check): use the connection's own addresses
    proxy,  // relayed: the header's addresses are the client's
};

enum class proxy_family : std::uint8_t {
    unspec,       // no usable addresses (v1 UNKNOWN, v2 UNSPEC or UDP, any LOCAL)
    tcp4,         // source and destination are IPv4 addresses
    tcp6,         // source and destination are IPv6 addresses
    unix_stream,  // source_unix and destination_unix hold raw sun_path bytes
};

// A header that parsed. The string views point into the parsed bytes.
struct proxy_header {
    std::size_t length = 0;  // the header's bytes; the client's data starts here
    int version = 0;         // 1 or 2
    proxy_command command = proxy_command::local;
    proxy_family family = proxy_family::unspec;
    address source;       // tcp4/tcp6: the client (an IPv4-mapped IPv6 address reads as IPv4)
    address destination;  // tcp4/tcp6: the address the client connected to
    std::string_view source_unix;       // unix_stream: 108 raw sun_path bytes
    std::string_view destination_unix;  // (see proxy_unix_address)
    std::string_view alpn;              // v2 TLV PP2_TYPE_ALPN (0x01), empty if absent
    std::string_view authority;         // v2 TLV PP2_TYPE_AUTHORITY (0x02), e.g. the TLS SNI
};

struct proxy_parse_result {
    enum status_kind : std::uint8_t {
        need_more,  // a prefix of a header so far: read until `needed` bytes, then parse again
        invalid,    // not a header this listener accepts: `reason` says why
        done,       // `header` holds it
    };
    status_kind status = need_more;
    std::size_t needed = 0;   // need_more: the input must reach at least this many bytes
    std::string_view reason;  // invalid: a static sentence for the log
    proxy_header header;      // done
};

namespace proxy_detail {

inline proxy_parse_result need(std::size_t n) noexcept {
    return {proxy_parse_result::need_more, n, {}, {}};
}

inline proxy_parse_result bad(std::string_view why) noexcept {
    return {proxy_parse_result::invalid, 0, why, {}};
}

inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

// A decimal in [0, max] without heading zeroes ("0" itself is fine), as v1 wants.
inline bool parse_decimal(std::string_view s, unsigned max, unsigned& out) noexcept {
    if (s.empty() || s.size() > 5 || (s.size() > 1 && s.front() == '0')) return false;
    unsigned v = 0;
    for (char c : s) {
        if (!is_digit(c)) return false;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > max) return false;
    out = v;
    return true;
}

// Four decimals 0-255 without heading zeroes, one dot between each: v1's only IPv4 form.
inline bool parse_v4(std::string_view s, asio::ip::address_v4& out) noexcept {
    asio::ip::address_v4::bytes_type b{};
    for (std::size_t i = 0; i < 4; ++i) {
        auto dot = i < 3 ? s.find('.') : s.size();
        if (dot == std::string_view::npos) return false;
        unsigned v = 0;
        if (dot > 3 || !parse_decimal(s.substr(0, dot), 255, v)) return false;
        b[i] = static_cast<unsigned char>(v);
        s.remove_prefix(i < 3 ? dot + 1 : dot);
    }
    if (!s.empty()) return false;
    out = asio::ip::address_v4(b);
    return true;
}

// IPv6 text as inet_pton(3) reads it (the form senders produce with inet_ntop), no zone.
inline bool parse_v6(std::string_view s, asio::ip::address_v6& out) noexcept {
    std::array<char, 46> text{};  // INET6_ADDRSTRLEN
    if (s.empty() || s.size() >= text.size()) return false;
    // inet_pton stops at a NUL: "::1\0junk" must not read as "::1".
    for (char c : s) {
        if (!is_digit(c) && !(c >= 'a' && c <= 'f') && !(c >= 'A' && c <= 'F') && c != ':' &&
            c != '.') {
            return false;
        }
    }
    std::memcpy(text.data(), s.data(), s.size());
    asio::ip::address_v6::bytes_type b{};
    if (::inet_pton(AF_INET6, text.data(), b.data()) != 1) return false;
    out = asio::ip::address_v6(b);
    return true;
}

inline std::string_view next_field(std::string_view& rest) noexcept {
    auto space = rest.find(' ');
    auto field = rest.substr(0, space);
    rest = space == std::string_view::npos ? std::string_view{} : rest.substr(space + 1);
    return field;
}

// `line` is the whole v1 line without its CRLF.
inline proxy_parse_result parse_v1_line(std::string_view line, std::size_t length) noexcept {
    proxy_parse_result r{proxy_parse_result::done, 0, {}, {}};
    r.header.length = length;
    r.header.version = 1;
    r.header.command = proxy_command::proxy;
    auto rest = line.substr(6);  // after "PROXY "
    // UNKNOWN: the sender speaks the protocol but has no addresses; the rest is to be ignored.
    if (rest == "UNKNOWN" || rest.starts_with("UNKNOWN ")) return r;
    bool v6 = rest.starts_with("TCP6 ");
    if (!v6 && !rest.starts_with("TCP4 ")) return bad("v1: protocol is not TCP4, TCP6 or UNKNOWN");
    rest.remove_prefix(5);
    std::array<std::string_view, 4> fields;
    for (auto& f : fields) {
        f = next_field(rest);
        if (f.empty()) return bad("v1: fields must be separated by exactly one space");
    }
    if (!rest.empty() || line.back() == ' ') return bad("v1: text after the destination port");
    unsigned source_port = 0;
    unsigned destination_port = 0;
    if (!parse_decimal(fields[2], 65535, source_port) ||
        !parse_decimal(fields[3], 65535, destination_port)) {
        return bad("v1: a port is not a decimal 0 to 65535 without heading zeroes");
    }
    asio::ip::address source;
    asio::ip::address destination;
    if (v6) {
        asio::ip::address_v6 s;
        asio::ip::address_v6 d;
        if (!parse_v6(fields[0], s) || !parse_v6(fields[1], d)) {
            return bad("v1: TCP6 with an address that is not IPv6");
        }
        source = s;
        destination = d;
    } else {
        asio::ip::address_v4 s;
        asio::ip::address_v4 d;
        if (!parse_v4(fields[0], s) || !parse_v4(fields[1], d)) {
            return bad("v1: TCP4 with an address that is not dotted decimal IPv4");
        }
        source = s;
        destination = d;
    }
    r.header.family = v6 ? proxy_family::tcp6 : proxy_family::tcp4;
    r.header.source =
        address(asio::ip::tcp::endpoint(source, static_cast<std::uint16_t>(source_port)));
    r.header.destination =
        address(asio::ip::tcp::endpoint(destination, static_cast<std::uint16_t>(destination_port)));
    return r;
}

// What may follow "PROXY " while the line is incomplete: rejecting early spares waiting for the
// CRLF of something that can never be a header.
inline bool v1_prefix_possible(std::string_view rest) noexcept {
    for (std::string_view keyword : {"TCP4 ", "TCP6 ", "UNKNOWN "}) {
        auto n = std::min(rest.size(), keyword.size());
        if (rest.substr(0, n) != keyword.substr(0, n)) continue;
        if (keyword.front() != 'T' || rest.size() <= n) return true;
        // TCP4/TCP6: addresses, ports and single spaces only.
        return std::all_of(rest.begin() + static_cast<std::ptrdiff_t>(n), rest.end(), [](char c) {
            return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
                   c == '.' || c == ' ' || c == '\r';
        });
    }
    return rest == "UNKNOWN";  // or "UNKNOWN\r", whose LF is still to come
}

inline proxy_parse_result parse_v1(std::string_view text) noexcept {
    constexpr std::string_view signature = "PROXY ";
    auto n = std::min(text.size(), signature.size());
    if (text.substr(0, n) != signature.substr(0, n))
        return bad("v1: line does not start \"PROXY \"");
    auto window = std::min(text.size(), proxy_v1_max_line);
    for (std::size_t i = 0; i < window; ++i) {
        if (text[i] == '\n') {
            if (i == 0 || text[i - 1] != '\r') return bad("v1: LF without CR before it");
            if (i + 1 < proxy_v1_min_line) return bad("v1: line too short");
            return parse_v1_line(text.substr(0, i - 1), i + 1);
        }
        if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] != '\n') {
            return bad("v1: CR not followed by LF");
        }
    }
    if (text.size() >= proxy_v1_max_line) return bad("v1: no CRLF within 107 bytes");
    if (text.size() > signature.size()) {
        auto rest = text.substr(signature.size());
        if (rest.back() == '\r') rest.remove_suffix(1);
        if (!v1_prefix_possible(rest)) return bad("v1: protocol is not TCP4, TCP6 or UNKNOWN");
    }
    return need(std::max(text.size() + 1, proxy_v1_min_line));
}

inline constexpr std::array<unsigned char, 12> v2_signature{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                            0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

inline std::uint16_t be16(const unsigned char* p) noexcept {
    return static_cast<std::uint16_t>(p[0] << 8 | p[1]);
}

inline proxy_parse_result parse_v2(std::span<const unsigned char> b, std::size_t limit) noexcept {
    auto n = std::min(b.size(), v2_signature.size());
    if (!std::equal(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n), v2_signature.begin())) {
        return bad("v2: wrong signature");
    }
    if (b.size() > 12) {
        if (b[12] >> 4 != 2) return bad("v2: version is not 2");
        if ((b[12] & 0x0f) > 1) return bad("v2: command is neither LOCAL nor PROXY");
    }
    bool relayed = b.size() > 12 && (b[12] & 0x0f) == 1;
    // The address block's size for the family/transport pairs the specification lists; a LOCAL
    // header's family is ignored, as the specification asks.
    std::size_t address_size = 0;
    proxy_family family = proxy_family::unspec;
    if (relayed && b.size() > 13) {
        unsigned af = b[13] >> 4;
        unsigned transport = b[13] & 0x0f;
        if (af > 3) return bad("v2: unknown address family");
        if (transport > 2) return bad("v2: unknown transport protocol");
        if ((af == 0) != (transport == 0)) return bad("v2: family and transport do not pair");
        constexpr std::array<std::size_t, 4> sizes{0, 12, 36, 216};
        address_size = sizes[af];
        // UDP is for a datagram server: fall back to UNSPEC, as the specification allows.
        if (transport == 1) {
            constexpr std::array<proxy_family, 4> families{proxy_family::unspec, proxy_family::tcp4,
                                                           proxy_family::tcp6,
                                                           proxy_family::unix_stream};
            family = families[af];
        }
    }
    if (b.size() < proxy_v2_fixed_length) return need(proxy_v2_fixed_length);
    std::size_t total = proxy_v2_fixed_length + be16(&b[14]);
    if (total > limit) return bad("v2: header longer than this listener accepts");
    if (total - proxy_v2_fixed_length < address_size) {
        return bad("v2: address block shorter than its family needs");
    }
    if (b.size() < total) return need(total);

    proxy_parse_result r{proxy_parse_result::done, 0, {}, {}};
    r.header.length = total;
    r.header.version = 2;
    r.header.command = relayed ? proxy_command::proxy : proxy_command::local;
    if (!relayed || family == proxy_family::unspec) return r;  // the block is skipped unread
    r.header.family = family;
    const unsigned char* a = &b[proxy_v2_fixed_length];
    auto as_text = [](const unsigned char* p, std::size_t size) {
        return std::string_view(reinterpret_cast<const char*>(p), size);
    };
    if (family == proxy_family::tcp4) {
        asio::ip::address_v4::bytes_type s;
        asio::ip::address_v4::bytes_type d;
        std::memcpy(s.data(), a, 4);
        std::memcpy(d.data(), a + 4, 4);
        r.header.source = address(asio::ip::tcp::endpoint(asio::ip::address_v4(s), be16(a + 8)));
        r.header.destination =
            address(asio::ip::tcp::endpoint(asio::ip::address_v4(d), be16(a + 10)));
    } else if (family == proxy_family::tcp6) {
        asio::ip::address_v6::bytes_type s;
        asio::ip::address_v6::bytes_type d;
        std::memcpy(s.data(), a, 16);
        std::memcpy(d.data(), a + 16, 16);
        r.header.source = address(asio::ip::tcp::endpoint(asio::ip::address_v6(s), be16(a + 32)));
        r.header.destination =
            address(asio::ip::tcp::endpoint(asio::ip::address_v6(d), be16(a + 34)));
    } else {
        r.header.source_unix = as_text(a, proxy_unix_path_size);
        r.header.destination_unix = as_text(a + proxy_unix_path_size, proxy_unix_path_size);
    }
    // TLVs: type (1 byte), length (2 bytes, big-endian), value; each must end inside the header.
    for (std::size_t at = proxy_v2_fixed_length + address_size; at < total;) {
        if (total - at < 3) return bad("v2: TLV cut off by the end of the header");
        unsigned type = b[at];
        std::size_t size = be16(&b[at + 1]);
        if (size > total - at - 3) return bad("v2: TLV runs past the end of the header");
        auto value = as_text(&b[at + 3], size);
        if (type == 0x01 && r.header.alpn.empty()) r.header.alpn = value;
        if (type == 0x02 && r.header.authority.empty()) r.header.authority = value;
        at += 3 + size;
    }
    return r;
}

}  // namespace proxy_detail

// Parses the PROXY protocol header at the start of `bytes`, of a version `accepted` allows.
//
// A v2 header longer than `v2_limit` bytes in all (at most proxy_v2_max_length, the format's own
// bound) is invalid. need_more means every byte so far fits a header: read more and call again
// with all of it. Invalid is final: no further byte makes it valid. Nothing is allocated.
//
// v1 follows the specification strictly: one space between fields, decimal IPv4 and ports with
// no heading zeroes, IPv6 as inet_pton reads it, CRLF within 107 bytes and no lone CR or LF;
// "PROXY UNKNOWN" (with anything before the CRLF) is a header without addresses. v2: signature,
// version 2, LOCAL or PROXY, the listed family/transport pairs with address blocks of 12, 36 or
// 216 bytes (a longer length carries TLVs, each bounds-checked, ALPN and authority kept); LOCAL
// skips its block unread; UDP and UNSPEC carry no usable address. The CRC32C TLV is not checked.
inline proxy_parse_result parse_proxy_header(
    std::span<const std::byte> bytes, proxy_protocol accepted,
    std::size_t v2_limit = proxy_v2_default_limit) noexcept {
    using namespace proxy_detail;
    bool v1 = accepted == proxy_protocol::v1 || accepted == proxy_protocol::either;
    bool v2 = accepted == proxy_protocol::v2 || accepted == proxy_protocol::either;
    if (!v1 && !v2) return bad("the PROXY protocol is off");
    if (bytes.empty()) return need(v1 ? proxy_v1_min_line : proxy_v2_fixed_length);
    auto first = static_cast<char>(bytes.front());
    if (v2 && first == '\r') {
        std::span<const unsigned char> b(reinterpret_cast<const unsigned char*>(bytes.data()),
                                         bytes.size());
        return parse_v2(b, std::min(v2_limit, proxy_v2_max_length));
    }
    if (v1 && first == 'P') {
        return parse_v1(
            std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    }
    if (v1 && v2) return bad("neither a v1 nor a v2 PROXY header");
    return bad(v1 ? "v1: line does not start \"PROXY \"" : "v2: wrong signature");
}

// The address a v2 Unix header's raw sun_path names: a path (up to its first NUL), a Linux
// abstract name (a leading NUL; trailing NULs are padding), or an unnamed socket (all NULs).
// Unlike the parser, this allocates (a path is a std::string).
inline address proxy_unix_address(std::string_view raw) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    auto size = std::min(raw.size(), sizeof sun.sun_path);
    std::memcpy(sun.sun_path, raw.data(), size);
    std::size_t used = 0;
    if (size > 0 && raw[0] == '\0') {
        auto last = raw.substr(0, size).find_last_not_of('\0');
        used = last == std::string_view::npos ? 0 : last + 1;
    } else {
        used = ::strnlen(sun.sun_path, size);
    }
    asio::generic::stream_protocol::endpoint ep(reinterpret_cast<const sockaddr*>(&sun),
                                                offsetof(sockaddr_un, sun_path) + used);
    return address_access::unix_named(ep);
}

}  // namespace netloop::detail
