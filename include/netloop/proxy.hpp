// SPDX-License-Identifier: MIT
// proxy: which PROXY protocol versions a listener reads, and the networks trusted to send them.
#pragma once

#include <netloop/detail/config.hpp>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <netloop/address.hpp>
#include <netloop/export.hpp>

namespace netloop {

/// Which versions of HAProxy's PROXY protocol header a listener expects before a connection's
/// first byte of data.
enum class proxy_protocol {
    off,     ///< no header: the first byte is the client's
    v1,      ///< the text header, `"PROXY TCP4 ...\r\n"`
    v2,      ///< the binary header (signature `\r\n\r\n\0\r\nQUIT\n`)
    either,  ///< v1 or v2, told apart by the first byte
};

/// An IPv4 or IPv6 network in CIDR notation, e.g. `10.0.0.0/8` or `::1/128`: the sources a
/// listener trusts to send a PROXY protocol header.
///
/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is kept as the IPv4 network it names, and
/// an IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) matches IPv4
/// networks; an IPv6 network matches IPv4 addresses through their mapped form, so `::/0` is
/// every IP address.
class NETLOOP_API network {
public:
    /// `0.0.0.0/0`: every IPv4 address.
    network() = default;

    /// Parses `"a.b.c.d/len"` (len 0 to 32) or `"v6/len"` (len 0 to 128, no brackets, no zone);
    /// without `/len`, one host (`/32` or `/128`).
    ///
    /// Throws `error` with `errc::invalid_address` for anything else, including an address with
    /// bits set past the prefix (`10.1.2.3/8`: write `10.0.0.0/8`, or the host as `/32`).
    [[nodiscard]] static network parse(std::string_view text);

    /// True if `a` is an IP address inside this network; a Unix socket address is in no network.
    [[nodiscard]] bool contains(const address& a) const noexcept;

    /// `"10.0.0.0/8"` or `"::1/128"`: the form `parse()` reads.
    [[nodiscard]] std::string to_string() const;

    /// True for an IPv6 network.
    [[nodiscard]] bool is_v6() const noexcept { return v6_; }

    /// The prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    [[nodiscard]] unsigned prefix_length() const noexcept { return prefix_; }

    friend bool operator==(const network& a, const network& b) noexcept = default;

private:
    std::array<std::uint8_t, 16> bytes_{};  // IPv4 in the first 4, network byte order
    unsigned prefix_ = 0;
    bool v6_ = false;
};

/// Parses a comma-separated list of networks, e.g. `"10.0.0.0/8, 192.168.0.0/16,::1"` (spaces
/// around an item are ignored).
///
/// Throws `error` with `errc::invalid_address` if the list is empty, an item is empty, or an item
/// is not a network (see `network::parse`).
[[nodiscard]] NETLOOP_API std::vector<network> parse_networks(std::string_view list);

/// True if any of `networks` contains `a`.
[[nodiscard]] NETLOOP_API bool contains(std::span<const network> networks,
                                        const address& a) noexcept;

/// `127.0.0.0/8` and `::1/128`: the loopback networks, a safe default list of trusted sources.
[[nodiscard]] NETLOOP_API std::vector<network> loopback_networks();

}  // namespace netloop
