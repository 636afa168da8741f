// SPDX-License-Identifier: MIT
// address: an IPv4 or IPv6 endpoint, made from text or from parts.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <netloop/detail/asio.hpp>

namespace netloop {

/// An IP address and a port.
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are normalised to IPv4, so a peer reads the
/// same whether the server listens on a dual-stack or an IPv4 socket.
class address {
public:
    /// `0.0.0.0:0`.
    address() = default;

    /// Wraps an Asio endpoint.
    explicit address(const asio::ip::tcp::endpoint& endpoint) noexcept;

    /// An IPv4 address from dotted text, e.g. `address::ipv4("127.0.0.1", 8080)`.
    ///
    /// Throws `error` with `errc::invalid_address` if `host` is not an IPv4 literal.
    [[nodiscard]] static address ipv4(std::string_view host, std::uint16_t port);

    /// An IPv6 address from text without brackets, e.g. `address::ipv6("::1", 8080)`.
    ///
    /// Throws `error` with `errc::invalid_address` if `host` is not an IPv6 literal.
    [[nodiscard]] static address ipv6(std::string_view host, std::uint16_t port);

    /// Parses `"a.b.c.d:port"` or `"[v6]:port"`; the port is 0 to 65535.
    ///
    /// Throws `error` with `errc::invalid_address` for anything else (host names included: they
    /// need a resolver, not a parser).
    [[nodiscard]] static address parse(std::string_view text);

    /// `"127.0.0.1:8080"` or `"[::1]:8080"`: the form `parse()` reads.
    [[nodiscard]] std::string to_string() const;

    /// The address without the port: `"127.0.0.1"` or `"::1"`.
    [[nodiscard]] std::string host() const;

    /// The port, in host byte order.
    [[nodiscard]] std::uint16_t port() const noexcept { return endpoint_.port(); }

    /// True for an IPv6 address.
    [[nodiscard]] bool is_v6() const noexcept { return endpoint_.address().is_v6(); }

    /// The Asio endpoint, for code that talks to Asio directly.
    [[nodiscard]] const asio::ip::tcp::endpoint& endpoint() const noexcept { return endpoint_; }

    friend bool operator==(const address& a, const address& b) noexcept {
        return a.endpoint_ == b.endpoint_;
    }

private:
    asio::ip::tcp::endpoint endpoint_{asio::ip::address_v4::any(), 0};
};

}  // namespace netloop
