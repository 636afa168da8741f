// SPDX-License-Identifier: MIT
// address: parsing and printing IP endpoints.
#include <charconv>

#include <netloop/address.hpp>
#include <netloop/error.hpp>

namespace netloop {
namespace {

[[noreturn]] void invalid(std::string_view text, const char* why) {
    throw error(errc::invalid_address, "parse address \"" + std::string(text) + "\" (" + why + ")");
}

asio::ip::address normalise(const asio::ip::address& a) {
    if (a.is_v6() && a.to_v6().is_v4_mapped()) {
        return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    }
    return a;
}

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

address address::parse(std::string_view text) {
    if (text.empty()) invalid(text, "empty");
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
    if (ec) invalid(text, "not an IPv4 address");
    return address(asio::ip::tcp::endpoint(a, parse_port(port, text)));
}

std::string address::host() const { return endpoint_.address().to_string(); }

std::string address::to_string() const {
    if (is_v6()) return "[" + host() + "]:" + std::to_string(port());
    return host() + ":" + std::to_string(port());
}

}  // namespace netloop
