// SPDX-License-Identifier: MIT
// address: parsing and printing IP endpoints and Unix socket names.
#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <netinet/in.h>
#include <sys/un.h>

#include <netloop/address.hpp>
#include <netloop/error.hpp>

#include "endpoint.hpp"

namespace netloop {
namespace {

// Strings in this file are built with append(), not `"literal" + string`: at -O3 g++ 12 warns
// about that (-Wrestrict, a false positive like GCC bug 105329), which breaks -Werror release
// builds.
[[noreturn]] void invalid(std::string_view text, std::string_view why) {
    std::string what = "parse address \"";
    what.append(text);
    what.append("\" (");
    what.append(why);
    what.push_back(')');
    throw error(errc::invalid_address, what);
}

// Host names are not parsed: resolving is a network call, which parse() never makes.
constexpr std::string_view not_ip_literal =
    "not an IP address: use an IP literal such as 127.0.0.1 or [::1]; "
    "netloop::resolve() turns a host name into addresses";

asio::ip::address normalise(const asio::ip::address& a) {
    if (a.is_v6() && a.to_v6().is_v4_mapped()) {
        return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    }
    return a;
}

constexpr std::size_t max_unix_path = sizeof(sockaddr_un::sun_path) - 1;

std::uint16_t parse_port(std::string_view text, std::string_view whole) {
    if (text.empty() || text.size() > 5) invalid(whole, "port must be 0 to 65535");
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > 65535) {
        invalid(whole, "port must be 0 to 65535");
    }
    return static_cast<std::uint16_t>(value);
}

}  // namespace

namespace detail {

asio::generic::stream_protocol::endpoint generic_endpoint(const address& a) {
    if (!a.is_unix()) return {a.endpoint().data(), a.endpoint().size(), IPPROTO_TCP};
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    const auto& path = a.path();
    std::memcpy(sun.sun_path, path.data(), path.size());
    if (path.front() == '@') sun.sun_path[0] = '\0';  // abstract: no file, no trailing NUL
    auto size = offsetof(sockaddr_un, sun_path) + path.size() + (path.front() == '@' ? 0 : 1);
    return {reinterpret_cast<const sockaddr*>(&sun), size};
}

address from_generic(const asio::generic::stream_protocol::endpoint& ep) {
    const auto* sa = ep.data();
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        asio::ip::tcp::endpoint ip;
        ip.resize(ep.size());
        std::memcpy(ip.data(), sa, ep.size());
        return address(ip);
    }
    if (sa->sa_family == AF_UNIX) return address_access::unix_named(ep);
    return address();
}

address address_access::unix_named(const asio::generic::stream_protocol::endpoint& ep) {
    address result;
    result.unix_ = true;
    const auto* sun = reinterpret_cast<const sockaddr_un*>(ep.data());
    auto length = ep.size() > offsetof(sockaddr_un, sun_path)
                      ? std::min(ep.size() - offsetof(sockaddr_un, sun_path), sizeof sun->sun_path)
                      : std::size_t{0};
    if (length == 0) return result;  // unnamed
    if (sun->sun_path[0] == '\0') {
        result.path_.reserve(length);
        result.path_.push_back('@');
        result.path_.append(sun->sun_path + 1, length - 1);
    } else {
        result.path_ = std::string(sun->sun_path, ::strnlen(sun->sun_path, length));
    }
    return result;
}

}  // namespace detail

address::address(const asio::ip::tcp::endpoint& endpoint) noexcept
    : endpoint_(normalise(endpoint.address()), endpoint.port()) {}

address address::ipv4(std::string_view host, std::uint16_t port) {
    asio::error_code ec;
    auto a = asio::ip::make_address_v4(std::string(host), ec);
    if (ec) invalid(host, "not an IPv4 address");
    return address(asio::ip::tcp::endpoint(a, port));
}

address address::ipv6(std::string_view host, std::uint16_t port) {
    asio::error_code ec;
    auto a = asio::ip::make_address_v6(std::string(host), ec);
    if (ec) invalid(host, "not an IPv6 address");
    address result;
    result.endpoint_ = asio::ip::tcp::endpoint(a, port);  // kept as given, mapped or not
    return result;
}

address address::unix_socket(std::string_view path) {
    if (path.empty() || path == "@") invalid(path, "empty Unix socket name");
    if (path.find('\0') != std::string_view::npos) invalid(path, "NUL in a Unix socket name");
    if (path.size() > max_unix_path) invalid(path, "Unix socket name over 107 bytes");
#if !defined(__linux__)
    if (path.front() == '@') {
        throw error(errc::not_supported,
                    "Unix socket " + std::string(path) + " (abstract names are Linux-only)");
    }
#endif
    address result;
    result.path_ = std::string(path);
    result.unix_ = true;
    result.endpoint_.port(0);
    return result;
}

address address::parse(std::string_view text) {
    if (text.empty()) invalid(text, "empty");
    if (text.starts_with("unix:")) return unix_socket(text.substr(5));
    std::string_view host;
    std::string_view port;
    if (text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
            invalid(text, "expected [v6]:port");
        }
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
        asio::error_code ec;
        auto a = asio::ip::make_address_v6(std::string(host), ec);
        if (ec) invalid(text, "not an IPv6 address");
        address result;
        result.endpoint_ = asio::ip::tcp::endpoint(a, parse_port(port, text));
        return result;
    }
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) invalid(text, "expected host:port");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) invalid(text, "IPv6 needs brackets: [v6]:port");
    asio::error_code ec;
    auto a = asio::ip::make_address_v4(std::string(host), ec);
    if (ec) invalid(text, not_ip_literal);
    return address(asio::ip::tcp::endpoint(a, parse_port(port, text)));
}

namespace {

// Appends `n` in decimal.
void append_number(std::string& text, unsigned n) {
    char digits[10];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
    (void)ec;  // 10 digits hold any unsigned
    text.append(digits, end);
}

// Appends an IPv4 address in dotted decimal: what inet_ntop writes, without its snprintf (a
// connection's error text is made at every EOF; bench/RESULTS.md, issue 24).
void append_v4(std::string& text, const asio::ip::address_v4& a) {
    auto bytes = a.to_bytes();
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (i != 0) text.push_back('.');
        append_number(text, bytes[i]);
    }
}

}  // namespace

std::string address::host() const {
    if (unix_) return path_;
    auto a = endpoint_.address();
    if (!a.is_v4()) return a.to_string();
    std::string text;
    append_v4(text, a.to_v4());
    return text;
}

std::string address::to_string() const {
    std::string text;
    if (unix_) return text.append("unix:").append(path_);
    if (is_v6()) {
        text.append("[").append(host()).append("]:");
    } else {
        append_v4(text, endpoint_.address().to_v4());
        text.push_back(':');
    }
    append_number(text, port());
    return text;
}

}  // namespace netloop
