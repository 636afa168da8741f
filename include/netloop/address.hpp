// SPDX-License-Identifier: MIT
// address: an IPv4 or IPv6 endpoint, or a Unix domain socket, made from text or from parts.
#pragma once

#include <netloop/detail/config.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include <netloop/detail/asio.hpp>
#include <netloop/export.hpp>

namespace netloop {

namespace detail {
struct address_access;
}

/// An IP address and a port, or the name of a Unix domain socket.
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are normalised to IPv4, so a peer reads the
/// same whether the server listens on a dual-stack or an IPv4 socket.
class NETLOOP_API address {
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

    /// A Unix domain stream socket: a file path (`"/run/app.sock"`), or a Linux abstract name
    /// written with a leading '@' (`"@app"`), which no file backs.
    ///
    /// Throws `error` with `errc::invalid_address` if `path` is empty, holds a NUL byte, or is
    /// longer than a `sockaddr_un` holds (107 bytes); `errc::not_supported` for an abstract name
    /// on a system other than Linux.
    [[nodiscard]] static address unix_socket(std::string_view path);

    /// Parses `"a.b.c.d:port"`, `"[v6]:port"` (the port is 0 to 65535) or `"unix:<path>"`.
    ///
    /// Throws `error` with `errc::invalid_address` for anything else. Host names included: they
    /// need a resolver, not a parser, and the message says so. To listen on a name, resolve it
    /// first with `netloop::resolve()` (connection.hpp); `connect("host:port")` resolves itself.
    [[nodiscard]] static address parse(std::string_view text);

    /// `"127.0.0.1:8080"`, `"[::1]:8080"` or `"unix:/run/app.sock"`: the form `parse()` reads.
    /// An unnamed Unix socket (a connecting client's, usually) prints as `"unix:"`.
    [[nodiscard]] std::string to_string() const;

    /// The address without the port: `"127.0.0.1"` or `"::1"`; the path of a Unix socket.
    [[nodiscard]] std::string host() const;

    /// The port, in host byte order; 0 for a Unix socket.
    [[nodiscard]] std::uint16_t port() const noexcept { return endpoint_.port(); }

    /// True for an IPv6 address.
    [[nodiscard]] bool is_v6() const noexcept { return endpoint_.address().is_v6(); }

    /// True for a Unix domain socket.
    [[nodiscard]] bool is_unix() const noexcept { return unix_; }

    /// A Unix socket's path (`'@'` first for an abstract name; empty if unnamed); empty for IP.
    [[nodiscard]] const std::string& path() const noexcept { return path_; }

    /// The Asio endpoint of an IP address, for code that talks to Asio directly (`0.0.0.0:0`
    /// for a Unix socket).
    [[nodiscard]] const asio::ip::tcp::endpoint& endpoint() const noexcept { return endpoint_; }

    friend bool operator==(const address& a, const address& b) noexcept {
        return a.unix_ == b.unix_ && a.endpoint_ == b.endpoint_ && a.path_ == b.path_;
    }

private:
    friend struct detail::address_access;
    asio::ip::tcp::endpoint endpoint_{asio::ip::address_v4::any(), 0};
    std::string path_;
    bool unix_ = false;
};

}  // namespace netloop
