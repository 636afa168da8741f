// SPDX-License-Identifier: MIT
// proxy: CIDR networks, parsed and matched, for the sources trusted to send a PROXY header.
#include <algorithm>
#include <charconv>
#include <cstring>

#include <netloop/error.hpp>
#include <netloop/proxy.hpp>

namespace netloop {
namespace {

[[noreturn]] void invalid(std::string_view text, const std::string& why) {
    throw error(errc::invalid_address, "parse network \"" + std::string(text) + "\" (" + why + ")");
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

constexpr std::array<std::uint8_t, 12> v4_mapped_prefix{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

// True if the first `bits` bits of `a` and `b` are equal.
bool same_prefix(const std::uint8_t* a, const std::uint8_t* b, unsigned bits) noexcept {
    unsigned whole = bits / 8;
    if (std::memcmp(a, b, whole) != 0) return false;
    unsigned rest = bits % 8;
    if (rest == 0) return true;
    auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

network network::parse(std::string_view text) {
    if (text.empty()) invalid(text, "empty");
    auto slash = text.find('/');
    auto host = text.substr(0, slash);
    if (host.find('%') != std::string_view::npos) invalid(text, "a zone is not part of a network");
    network n;
    asio::error_code ec;
    unsigned max_prefix = 32;
    if (host.find(':') != std::string_view::npos) {
        auto a = asio::ip::make_address_v6(std::string(host), ec);
        if (ec) invalid(text, "not an IPv6 address");
        auto b = a.to_bytes();
        std::copy(b.begin(), b.end(), n.bytes_.begin());
        n.v6_ = true;
        max_prefix = 128;
    } else {
        auto a = asio::ip::make_address_v4(std::string(host), ec);
        if (ec) invalid(text, "not an IPv4 address");
        auto b = a.to_bytes();
        std::copy(b.begin(), b.end(), n.bytes_.begin());
    }
    n.prefix_ = max_prefix;
    if (slash != std::string_view::npos) {
        auto digits = text.substr(slash + 1);
        unsigned value = 0;
        auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (digits.empty() || err != std::errc() || end != digits.data() + digits.size() ||
            value > max_prefix || (digits.size() > 1 && digits.front() == '0')) {
            invalid(text, "prefix length must be 0 to " + std::to_string(max_prefix));
        }
        n.prefix_ = value;
    }
    // Bits past the prefix: a typo (10.1.2.3/8) would silently trust a whole network.
    std::array<std::uint8_t, 16> masked{};
    std::copy_n(n.bytes_.begin(), n.prefix_ / 8, masked.begin());
    if (n.prefix_ % 8 != 0) {
        masked[n.prefix_ / 8] =
            static_cast<std::uint8_t>(n.bytes_[n.prefix_ / 8] & (0xff << (8 - n.prefix_ % 8)));
    }
    if (masked != n.bytes_) {
        n.bytes_ = masked;
        invalid(text, "address bits set past the prefix; the network is " + n.to_string());
    }
    // ::ffff:a.b.c.d/len with len >= 96 names IPv4 addresses: keep it as the IPv4 network.
    if (n.v6_ && n.prefix_ >= 96 &&
        std::equal(v4_mapped_prefix.begin(), v4_mapped_prefix.end(), n.bytes_.begin())) {
        std::array<std::uint8_t, 16> v4{};
        std::copy_n(n.bytes_.begin() + 12, 4, v4.begin());
        n.bytes_ = v4;
        n.prefix_ -= 96;
        n.v6_ = false;
    }
    return n;
}

bool network::contains(const address& a) const noexcept {
    if (a.is_unix()) return false;
    auto ip = a.endpoint().address();
    if (ip.is_v6() && ip.to_v6().is_v4_mapped()) {
        ip = asio::ip::make_address_v4(asio::ip::v4_mapped, ip.to_v6());
    }
    if (ip.is_v4()) {
        auto b = ip.to_v4().to_bytes();
        if (!v6_) return same_prefix(b.data(), bytes_.data(), prefix_);
        std::array<std::uint8_t, 16> mapped{};
        std::copy(v4_mapped_prefix.begin(), v4_mapped_prefix.end(), mapped.begin());
        std::copy(b.begin(), b.end(), mapped.begin() + 12);
        return same_prefix(mapped.data(), bytes_.data(), prefix_);
    }
    if (!v6_) return false;
    auto b = ip.to_v6().to_bytes();
    return same_prefix(b.data(), bytes_.data(), prefix_);
}

std::string network::to_string() const {
    std::string host;
    if (v6_) {
        asio::ip::address_v6::bytes_type b;
        std::copy(bytes_.begin(), bytes_.end(), b.begin());
        host = asio::ip::address_v6(b).to_string();
    } else {
        host = asio::ip::address_v4({bytes_[0], bytes_[1], bytes_[2], bytes_[3]}).to_string();
    }
    return host + "/" + std::to_string(prefix_);
}

std::vector<network> parse_networks(std::string_view list) {
    std::vector<network> out;
    const auto whole = list;
    if (trim(list).empty()) invalid(whole, "empty list");
    for (;;) {
        auto comma = list.find(',');
        auto item = trim(list.substr(0, comma));
        if (item.empty()) invalid(whole, "empty item in the list");
        out.push_back(network::parse(item));
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return out;
}

bool contains(std::span<const network> networks, const address& a) noexcept {
    return std::any_of(networks.begin(), networks.end(),
                       [&](const network& n) { return n.contains(a); });
}

std::vector<network> loopback_networks() {
    return {network::parse("127.0.0.0/8"), network::parse("::1/128")};
}

}  // namespace netloop
