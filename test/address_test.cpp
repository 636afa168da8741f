// SPDX-License-Identifier: MIT
// address: parsing, printing and the errors of bad text.
#include <netloop/address.hpp>
#include <netloop/error.hpp>

#include "support/catch.hpp"

using netloop::address;
using netloop::errc;

namespace {

errc parse_error(const char* text) {
    try {
        (void)address::parse(text);
    } catch (const netloop::error& e) {
        return e.kind();
    }
    return errc{};
}

}  // namespace

TEST_CASE("parse() reads IPv4 and bracketed IPv6 with a port", "[address]") {
    auto v4 = address::parse("127.0.0.1:8080");
    CHECK(v4.port() == 8080);
    CHECK_FALSE(v4.is_v6());
    CHECK(v4.to_string() == "127.0.0.1:8080");
    CHECK(v4.host() == "127.0.0.1");

    auto v6 = address::parse("[::1]:0");
    CHECK(v6.is_v6());
    CHECK(v6.port() == 0);
    CHECK(v6.to_string() == "[::1]:0");

    CHECK(address::parse("0.0.0.0:65535").port() == 65535);
}

TEST_CASE("to_string() and parse() round-trip", "[address]") {
    auto text = GENERATE(as<std::string>{}, "10.1.2.3:1", "[fe80::1]:443", "[::]:0",
                         "255.255.255.255:65535", "0.0.0.0:0", "192.168.100.9:80");
    CHECK(address::parse(text).to_string() == text);
}

TEST_CASE("ipv4() and ipv6() build addresses from parts", "[address]") {
    CHECK(address::ipv4("127.0.0.1", 80) == address::parse("127.0.0.1:80"));
    CHECK(address::ipv6("::1", 80) == address::parse("[::1]:80"));
    CHECK(parse_error("x") == errc::invalid_address);
    CHECK_THROWS_AS(address::ipv4("::1", 80), netloop::error);
    CHECK_THROWS_AS(address::ipv6("127.0.0.1", 80), netloop::error);
}

TEST_CASE("bad text throws errc::invalid_address with the text in the message", "[address]") {
    auto text = GENERATE(as<std::string>{}, "300.1.1.1:80", "x:99999", "", "127.0.0.1",
                         "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:80x", "::1:80",
                         "[::1]80", "[::1", "[zz]:80", "localhost:80", "1.2.3:80", " 1.2.3.4:80");
    CAPTURE(text);
    try {
        (void)address::parse(text);
        FAIL("parse accepted bad text");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == errc::invalid_address);
        CHECK(e.code() == errc::invalid_address);
        CHECK(e.sys_errno() == 0);
        CHECK(std::string(e.what()).find("\"" + text + "\"") != std::string::npos);
    }
}

TEST_CASE("a host name in parse() is refused with a message saying to use an IP literal",
          "[address]") {
    try {
        (void)address::parse("localhost:7071");
        FAIL("parse accepted a host name");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == errc::invalid_address);
        CHECK(std::string(e.what()) ==
              "parse address \"localhost:7071\" (not an IP address: use an IP literal such as "
              "127.0.0.1 or [::1]; netloop::resolve() turns a host name into addresses): invalid "
              "address");
    }
}

TEST_CASE("an IPv4-mapped endpoint reads as IPv4", "[address]") {
    auto mapped = asio::ip::make_address_v6("::ffff:127.0.0.2");
    address a(asio::ip::tcp::endpoint(mapped, 7));
    CHECK_FALSE(a.is_v6());
    CHECK(a.to_string() == "127.0.0.2:7");
}
