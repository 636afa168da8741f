// SPDX-License-Identifier: MIT
// proxy: CIDR networks for the trusted sources of PROXY headers: parsing, matching, bad text.
#include <netloop/address.hpp>
#include <netloop/error.hpp>
#include <netloop/proxy.hpp>

#include "support/catch.hpp"

using netloop::address;
using netloop::errc;
using netloop::network;

namespace {

errc network_error(const std::string& text) {
    try {
        (void)network::parse(text);
    } catch (const netloop::error& e) {
        return e.kind();
    }
    return errc{};
}

errc list_error(const std::string& text) {
    try {
        (void)netloop::parse_networks(text);
    } catch (const netloop::error& e) {
        return e.kind();
    }
    return errc{};
}

}  // namespace

TEST_CASE("an IPv4 network contains exactly the addresses under its prefix", "[proxy]") {
    auto n = network::parse("10.0.0.0/8");
    CHECK_FALSE(n.is_v6());
    CHECK(n.prefix_length() == 8);
    CHECK(n.to_string() == "10.0.0.0/8");
    CHECK(n.contains(address::ipv4("10.0.0.0", 1)));
    CHECK(n.contains(address::ipv4("10.255.255.255", 80)));
    CHECK_FALSE(n.contains(address::ipv4("11.0.0.0", 1)));
    CHECK_FALSE(n.contains(address::ipv4("9.255.255.255", 1)));
    auto odd = network::parse("192.168.4.0/22");
    CHECK(odd.contains(address::ipv4("192.168.7.255", 1)));
    CHECK_FALSE(odd.contains(address::ipv4("192.168.8.0", 1)));
    CHECK_FALSE(odd.contains(address::ipv4("192.168.3.255", 1)));
}

TEST_CASE("an IPv6 network contains exactly the addresses under its prefix", "[proxy]") {
    auto n = network::parse("2001:db8::/33");
    CHECK(n.is_v6());
    CHECK(n.to_string() == "2001:db8::/33");
    CHECK(n.contains(address::ipv6("2001:db8:7fff::1", 1)));
    CHECK_FALSE(n.contains(address::ipv6("2001:db8:8000::1", 1)));
    CHECK_FALSE(n.contains(address::ipv4("32.1.13.184", 1)));
    auto one = network::parse("::1/128");
    CHECK(one.contains(address::ipv6("::1", 9)));
    CHECK_FALSE(one.contains(address::ipv6("::2", 9)));
}

TEST_CASE("an address without a prefix is one host", "[proxy]") {
    CHECK(network::parse("127.0.0.1") == network::parse("127.0.0.1/32"));
    CHECK(network::parse("::1") == network::parse("::1/128"));
    CHECK(network::parse("127.0.0.1").contains(address::ipv4("127.0.0.1", 5)));
    CHECK_FALSE(network::parse("127.0.0.1").contains(address::ipv4("127.0.0.2", 5)));
}

TEST_CASE("IPv4-mapped IPv6 addresses and networks match as IPv4", "[proxy]") {
    auto v4 = network::parse("127.0.0.0/8");
    CHECK(v4.contains(address::ipv6("::ffff:127.0.0.2", 1)));
    CHECK_FALSE(v4.contains(address::ipv6("::ffff:128.0.0.1", 1)));
    auto mapped = network::parse("::ffff:10.0.0.0/104");
    CHECK(mapped == network::parse("10.0.0.0/8"));
    CHECK(mapped.contains(address::ipv4("10.1.2.3", 1)));
    CHECK(network::parse("::/0").contains(address::ipv4("192.0.2.1", 1)));
    CHECK(network::parse("0.0.0.0/0").contains(address::ipv4("192.0.2.1", 1)));
    CHECK_FALSE(network::parse("0.0.0.0/0").contains(address::ipv6("2001:db8::1", 1)));
}

TEST_CASE("a Unix socket address is in no network", "[proxy]") {
    CHECK_FALSE(network::parse("0.0.0.0/0").contains(address::unix_socket("/run/x.sock")));
    CHECK_FALSE(network::parse("::/0").contains(address::unix_socket("@x")));
}

TEST_CASE("a list of networks parses with or without spaces and matches any of them", "[proxy]") {
    auto list = netloop::parse_networks("10.0.0.0/8, 192.168.0.0/16,::1");
    REQUIRE(list.size() == 3);
    CHECK(list[1].to_string() == "192.168.0.0/16");
    CHECK(netloop::contains(list, address::ipv4("192.168.1.1", 1)));
    CHECK(netloop::contains(list, address::ipv6("::1", 1)));
    CHECK_FALSE(netloop::contains(list, address::ipv4("172.16.0.1", 1)));
    auto loopback = netloop::loopback_networks();
    CHECK(netloop::contains(loopback, address::ipv4("127.0.0.3", 1)));
    CHECK(netloop::contains(loopback, address::ipv6("::1", 1)));
    CHECK_FALSE(netloop::contains(loopback, address::ipv4("10.0.0.1", 1)));
}

TEST_CASE("bad network text throws invalid_address", "[proxy]") {
    auto text =
        GENERATE(as<std::string>{}, "", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1",
                 "10.0.0.0/08", "10.0.0.0/8x", "10.1.2.3/8", "2001:db8::1/32", "fe80::1%eth0/64",
                 "example.com/8", "10.0.0/8", "[::1]/128", "10.0.0.0/8/8", "010.0.0.0/8");
    CAPTURE(text);
    CHECK(network_error(text) == errc::invalid_address);
}

TEST_CASE("a list with an empty or bad item throws invalid_address", "[proxy]") {
    auto text = GENERATE(as<std::string>{}, "", " ", "10.0.0.0/8,", ",10.0.0.0/8",
                         "10.0.0.0/8,,::1", "10.0.0.0/8,bad");
    CAPTURE(text);
    CHECK(list_error(text) == errc::invalid_address);
}

TEST_CASE("the error for bits past the prefix names the network meant", "[proxy]") {
    try {
        (void)network::parse("10.1.2.3/8");
        FAIL("no error");
    } catch (const netloop::error& e) {
        CHECK(std::string(e.what()).find("10.0.0.0/8") != std::string::npos);
    }
}
