// SPDX-License-Identifier: MIT
// The PROXY protocol parser (v1 and v2): valid headers, TLVs, and bad headers case by case.
#include "../lib/proxy_protocol.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include <netloop/address.hpp>
#include <netloop/proxy.hpp>

#include "support/catch.hpp"

// Counts the allocations made while `counting` is set, to show the parser makes none.
namespace {
thread_local bool counting = false;
thread_local std::size_t allocations = 0;
}  // namespace

void* operator new(std::size_t n) {
    if (counting) ++allocations;
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
// The nothrow form too (Catch uses it): under ASan, its own nothrow new with our free-based
// delete would be an alloc-dealloc mismatch.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    if (counting) ++allocations;
    return std::malloc(n == 0 ? 1 : n);
}
// Not inlined: g++ would otherwise see free() of what operator new returned, and warn.
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

using netloop::address;
using netloop::proxy_protocol;
using netloop::detail::parse_proxy_header;
using netloop::detail::proxy_command;
using netloop::detail::proxy_family;
using netloop::detail::proxy_parse_result;

namespace {

std::span<const std::byte> as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Parses a copy of `s` kept for the rest of the run: the result's views (ALPN, authority, Unix
// paths) point into the bytes, which the tests often pass as a temporary (`h + payload`).
proxy_parse_result parse(std::string_view s, proxy_protocol accepted = proxy_protocol::either) {
    static std::deque<std::string> kept;
    kept.emplace_back(s);
    return parse_proxy_header(as_bytes(kept.back()), accepted);
}

const std::string v2_signature("\r\n\r\n\0\r\nQUIT\n", 12);

std::string be16(std::size_t v) {
    return {static_cast<char>((v >> 8) & 0xff), static_cast<char>(v & 0xff)};
}

// A v2 header: version/command byte, family byte, then `block` (addresses and TLVs).
std::string v2(unsigned char ver_cmd, unsigned char family, const std::string& block) {
    return v2_signature + static_cast<char>(ver_cmd) + static_cast<char>(family) +
           be16(block.size()) + block;
}

std::string tlv(unsigned char type, const std::string& value) {
    return static_cast<char>(type) + be16(value.size()) + value;
}

// 192.0.2.1:56324 -> 198.51.100.7:443.
const std::string v4_block =
    std::string("\xC0\x00\x02\x01\xC6\x33\x64\x07", 8) + be16(56324) + be16(443);

// 2001:db8::1:56324 -> 2001:db8::2:443.
std::string v6_block() {
    std::string s(16, '\0');
    s[0] = '\x20';
    s[1] = '\x01';
    s[2] = '\x0d';
    s[3] = '\xb8';
    std::string d = s;
    s[15] = 1;
    d[15] = 2;
    return s + d + be16(56324) + be16(443);
}

std::string unix_block(const std::string& source, const std::string& destination) {
    std::string s = source;
    s.resize(108, '\0');
    std::string d = destination;
    d.resize(108, '\0');
    return s + d;
}

const std::string payload = "GET / HTTP/1.1\r\n";

}  // namespace

TEST_CASE("a v1 TCP4 line yields the client's and the destination's addresses", "[proxy]") {
    std::string line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    auto r = parse(line + payload);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == line.size());
    CHECK(r.header.version == 1);
    CHECK(r.header.command == proxy_command::proxy);
    CHECK(r.header.family == proxy_family::tcp4);
    CHECK(r.header.source == address::ipv4("192.168.0.1", 56324));
    CHECK(r.header.destination == address::ipv4("192.168.0.11", 443));
}

TEST_CASE("a v1 TCP6 line yields IPv6 addresses", "[proxy]") {
    std::string line = "PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 0 65535\r\n";
    auto r = parse(line, proxy_protocol::v1);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == line.size());
    CHECK(r.header.family == proxy_family::tcp6);
    CHECK(r.header.source == address::ipv6("2001:db8::1", 0));
    CHECK(r.header.destination == address::ipv6("2001:db8::2", 65535));
}

TEST_CASE("a v1 line of the longest form, 107 bytes, is accepted", "[proxy]") {
    std::string full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    std::string line = "PROXY UNKNOWN " + full + " " + full + " 65535 65535\r\n";
    REQUIRE(line.size() == 107);
    auto r = parse(line);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == 107);
    std::string tcp6 = "PROXY TCP6 " + full + " " + full + " 65535 65535\r\n";
    auto r6 = parse(tcp6);
    REQUIRE(r6.status == proxy_parse_result::done);
    CHECK(r6.header.length == 104);
}

TEST_CASE("v1 UNKNOWN, short or with ignored fields, is a header without addresses", "[proxy]") {
    auto line =
        GENERATE(as<std::string>{}, "PROXY UNKNOWN\r\n", "PROXY UNKNOWN anything at all\r\n",
                 "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n");
    CAPTURE(line);
    auto r = parse(line + payload);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == line.size());
    CHECK(r.header.command == proxy_command::proxy);
    CHECK(r.header.family == proxy_family::unspec);
}

TEST_CASE("v2 PROXY over TCP/IPv4 and TCP/IPv6 yields the addresses", "[proxy]") {
    auto h4 = v2(0x21, 0x11, v4_block);
    auto r4 = parse(h4 + payload, proxy_protocol::v2);
    REQUIRE(r4.status == proxy_parse_result::done);
    CHECK(r4.header.length == 16 + 12);
    CHECK(r4.header.version == 2);
    CHECK(r4.header.command == proxy_command::proxy);
    CHECK(r4.header.family == proxy_family::tcp4);
    CHECK(r4.header.source == address::ipv4("192.0.2.1", 56324));
    CHECK(r4.header.destination == address::ipv4("198.51.100.7", 443));

    auto h6 = v2(0x21, 0x21, v6_block());
    auto r6 = parse(h6 + payload);
    REQUIRE(r6.status == proxy_parse_result::done);
    CHECK(r6.header.length == 16 + 36);
    CHECK(r6.header.family == proxy_family::tcp6);
    CHECK(r6.header.source == address::ipv6("2001:db8::1", 56324));
    CHECK(r6.header.destination == address::ipv6("2001:db8::2", 443));
}

TEST_CASE("v2 PROXY over a Unix stream socket yields the paths", "[proxy]") {
    auto h = v2(0x21, 0x31, unix_block("/run/client.sock", std::string("\0abstract", 9)));
    auto r = parse(h);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == 16 + 216);
    CHECK(r.header.family == proxy_family::unix_stream);
    CHECK(r.header.source_unix.size() == 108);
    CHECK(netloop::detail::proxy_unix_address(r.header.source_unix) ==
          address::unix_socket("/run/client.sock"));
    CHECK(netloop::detail::proxy_unix_address(r.header.destination_unix) ==
          address::unix_socket("@abstract"));
    auto unnamed = netloop::detail::proxy_unix_address(std::string(108, '\0'));
    CHECK(unnamed.is_unix());
    CHECK(unnamed.path().empty());
}

TEST_CASE("v2 LOCAL (a health check) is accepted without addresses, its block skipped", "[proxy]") {
    auto family = GENERATE(0x00, 0x11, 0x21, 0x31, 0xff);
    auto block = GENERATE(as<std::string>{}, "", "\x01\x02\x03 whatever the sender put");
    CAPTURE(family, block);
    auto h = v2(0x20, static_cast<unsigned char>(family), block);
    auto r = parse(h + payload);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == h.size());
    CHECK(r.header.command == proxy_command::local);
    CHECK(r.header.family == proxy_family::unspec);
}

TEST_CASE("v2 UNSPEC and UDP carry no usable address", "[proxy]") {
    auto r0 = parse(v2(0x21, 0x00, ""));
    REQUIRE(r0.status == proxy_parse_result::done);
    CHECK(r0.header.family == proxy_family::unspec);
    auto r1 = parse(v2(0x21, 0x12, v4_block));
    REQUIRE(r1.status == proxy_parse_result::done);
    CHECK(r1.header.family == proxy_family::unspec);
    CHECK(r1.header.length == 28);
}

TEST_CASE("v2 TLVs: ALPN and authority are kept, others skipped", "[proxy]") {
    std::string tlvs = tlv(0x04, std::string(5, '\0')) + tlv(0x01, "h2") +
                       tlv(0x20, std::string("\x01\0\0\0\0", 5) + tlv(0x21, "TLSv1.3")) +
                       tlv(0x02, "example.com") + tlv(0xE0, "") + tlv(0x05, std::string(128, 'u'));
    auto h = v2(0x21, 0x11, v4_block + tlvs);
    auto r = parse(h + payload);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == h.size());
    CHECK(r.header.alpn == "h2");
    CHECK(r.header.authority == "example.com");
    CHECK(r.header.source == address::ipv4("192.0.2.1", 56324));

    auto bare = parse(v2(0x21, 0x11, v4_block));
    REQUIRE(bare.status == proxy_parse_result::done);
    CHECK(bare.header.alpn.empty());
    CHECK(bare.header.authority.empty());
}

TEST_CASE("every proper prefix of a valid header asks for more, never more than it lacks",
          "[proxy]") {
    std::string tlvs = tlv(0x01, "http/1.1") + tlv(0x02, "a.example");
    auto header = GENERATE_COPY(
        as<std::string>{}, "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        "PROXY TCP6 ::1 ::1 1 2\r\n", "PROXY UNKNOWN\r\n", v2(0x21, 0x11, v4_block + tlvs),
        v2(0x21, 0x21, v6_block()), v2(0x21, 0x31, unix_block("/a", "/b")), v2(0x20, 0, ""));
    auto accepted = GENERATE(proxy_protocol::either, proxy_protocol::v1, proxy_protocol::v2);
    bool is_v1 = header.front() == 'P';
    if (is_v1 && accepted == proxy_protocol::v2) return;
    if (!is_v1 && accepted == proxy_protocol::v1) return;
    for (std::size_t length = 0; length < header.size(); ++length) {
        CAPTURE(header, length);
        auto r = parse(std::string_view(header).substr(0, length), accepted);
        REQUIRE(r.status == proxy_parse_result::need_more);
        CHECK(r.needed > length);
        CHECK(r.needed <= header.size());
    }
    CHECK(parse(header, accepted).status == proxy_parse_result::done);
}

TEST_CASE("a v1 line without CRLF within 107 bytes is invalid, not waited for", "[proxy]") {
    std::string full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    std::string line = "PROXY UNKNOWN " + full + " " + full + " 65535 655350\r\n";  // 108
    auto r = parse(line);
    REQUIRE(r.status == proxy_parse_result::invalid);
    CHECK(r.reason.find("107") != std::string_view::npos);
    // Already invalid once 107 bytes came without a CRLF.
    CHECK(parse(line.substr(0, 107)).status == proxy_parse_result::invalid);
    CHECK(parse(line.substr(0, 106)).status == proxy_parse_result::need_more);
}

TEST_CASE("bad v1 lines are invalid, each with its reason", "[proxy]") {
    struct bad_case {
        std::string line;
        std::string_view reason;  // a word the reason must hold
    };
    auto c = GENERATE(values<bad_case>({
        {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", "LF without CR"},
        {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX", "CR not followed"},
        {"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n", "one space"},
        {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", "after the destination"},
        {"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", "one space"},
        {"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n", "IPv4"},
        {"PROXY TCP4 256.168.0.1 192.168.0.11 56324 443\r\n", "IPv4"},
        {"PROXY TCP4 192.168.0 192.168.0.11 56324 443\r\n", "IPv4"},
        {"PROXY TCP4 ::1 192.168.0.11 56324 443\r\n", "IPv4"},
        {"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n", "port"},
        {"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n", "port"},
        {"PROXY TCP4 192.168.0.1 192.168.0.11 1 -1\r\n", "port"},
        {"PROXY TCP6 192.168.0.1 ::1 1 2\r\n", "IPv6"},
        {"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "IPv6"},
        {std::string("PROXY TCP6 ::1\0\0 ::1 1 2\r\n", 26), "IPv6"},
        {std::string("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", 33), "IPv4"},
        {"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6"},
        {"PROXY UNKNOWNX\r\n", "TCP4, TCP6"},
        {"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6"},
        {"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6"},
        {"PROXY \r\n", "too short"},
        {"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY"},
        {"GET / HTTP/1.1\r\n", "neither"},
    }));
    CAPTURE(c.line);
    auto r = parse(c.line);
    REQUIRE(r.status == proxy_parse_result::invalid);
    CAPTURE(r.reason);
    CHECK(r.reason.find(c.reason) != std::string_view::npos);
}

TEST_CASE("garbage after \"PROXY \" is refused before its CRLF arrives", "[proxy]") {
    CHECK(parse("PROXY X").status == proxy_parse_result::invalid);
    CHECK(parse("PROXY TCP4 1.2.3.4 \x01").status == proxy_parse_result::invalid);
    CHECK(parse("PROXY TCP4 1.2.3.4 zz").status == proxy_parse_result::invalid);
    CHECK(parse("PROXY UNKNOWN \x01\x02").status == proxy_parse_result::need_more);
}

TEST_CASE("bad v2 headers are invalid, each with its reason", "[proxy]") {
    struct bad_case {
        std::string header;
        std::string_view reason;
    };
    std::string wrong_signature = v2(0x21, 0x11, v4_block);
    wrong_signature[4] = 'X';
    auto c = GENERATE_COPY(values<bad_case>({
        {wrong_signature, "signature"},
        {v2(0x11, 0x11, v4_block), "version"},
        {v2(0x31, 0x11, v4_block), "version"},
        {v2(0x22, 0x11, v4_block), "command"},
        {v2(0x2f, 0x11, v4_block), "command"},
        {v2(0x21, 0x41, v4_block), "family"},
        {v2(0x21, 0x13, v4_block), "transport"},
        {v2(0x21, 0x10, v4_block), "pair"},
        {v2(0x21, 0x01, v4_block), "pair"},
        {v2(0x21, 0x11, v4_block.substr(0, 11)), "shorter"},
        {v2(0x21, 0x21, v4_block), "shorter"},
        {v2(0x21, 0x31, v6_block()), "shorter"},
        {v2(0x21, 0x12, ""), "shorter"},
        {v2(0x21, 0x11, v4_block + tlv(0x01, "h2").substr(0, 2)), "cut off"},
        {v2(0x21, 0x11, v4_block + tlv(0x01, "h2").substr(0, 4)), "past the end"},
        {v2(0x21, 0x11, v4_block + tlv(0x02, "x") + std::string("\x05\xff\xff", 3)),
         "past the end"},
        {v2(0x21, 0x11, v4_block + tlv(0x04, std::string(5000, '\0'))), "longer"},
    }));
    CAPTURE(c.header.size());
    auto r = parse(c.header + payload, proxy_protocol::v2);
    REQUIRE(r.status == proxy_parse_result::invalid);
    CAPTURE(r.reason);
    CHECK(r.reason.find(c.reason) != std::string_view::npos);
}

TEST_CASE("a bad v2 fixed part is refused before the rest of the header arrives", "[proxy]") {
    auto bad = v2(0x31, 0x11, v4_block);
    CHECK(parse(bad.substr(0, 13)).status == proxy_parse_result::invalid);
    auto family = v2(0x21, 0x51, v4_block);
    CHECK(parse(family.substr(0, 14)).status == proxy_parse_result::invalid);
    auto too_long = v2(0x21, 0x11, v4_block + tlv(0x04, std::string(5000, '\0')));
    CHECK(parse(too_long.substr(0, 16)).status == proxy_parse_result::invalid);
}

TEST_CASE("the v2 length limit is the caller's, up to the format's 16 + 65535 bytes", "[proxy]") {
    auto h = v2(0x21, 0x11, v4_block + tlv(0x04, std::string(5000, '\0')));
    auto large = parse_proxy_header(as_bytes(h), proxy_protocol::v2, 8192);
    REQUIRE(large.status == proxy_parse_result::done);
    CHECK(large.header.length == h.size());
    auto small = parse_proxy_header(as_bytes(v2(0x21, 0x11, v4_block)), proxy_protocol::v2, 27);
    CHECK(small.status == proxy_parse_result::invalid);
    auto largest = v2(0x21, 0x11, v4_block + tlv(0x04, std::string(65535 - 12 - 3, '\0')));
    REQUIRE(largest.size() == 16 + 65535);
    auto r = parse_proxy_header(as_bytes(largest), proxy_protocol::v2, SIZE_MAX);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == largest.size());
}

TEST_CASE("a listener takes only the versions it accepts", "[proxy]") {
    std::string one = "PROXY UNKNOWN\r\n";
    std::string two = v2(0x20, 0, "");
    CHECK(parse(one, proxy_protocol::v2).status == proxy_parse_result::invalid);
    CHECK(parse(two, proxy_protocol::v1).status == proxy_parse_result::invalid);
    CHECK(parse(one, proxy_protocol::off).status == proxy_parse_result::invalid);
    CHECK(parse(one, proxy_protocol::v1).status == proxy_parse_result::done);
    CHECK(parse(two, proxy_protocol::v2).status == proxy_parse_result::done);
}

TEST_CASE("garbage is invalid from its first byte", "[proxy]") {
    auto text = GENERATE(as<std::string>{}, "\x16\x03\x01\x02\x00", "SSH-2.0-OpenSSH\r\n",
                         std::string(1, '\0'), "\r\n\r\n\r\n", "proxy TCP4");
    CAPTURE(text);
    CHECK(parse(text).status == proxy_parse_result::invalid);
}

TEST_CASE("the headers HAProxy 2.6 sends with send-proxy-v2 and check-send-proxy parse",
          "[proxy]") {
    // Captured from HAProxy 2.6.12 (samples/haproxy/haproxy.cfg): a client on 127.0.0.2:52983
    // relayed to 127.0.0.1:56247, then "hello"; and a health check.
    const std::string relayed(
        "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x02\x7f\x00\x00\x01\xce\xf7\xdb\xb7"
        "hello",
        33);
    auto r = parse(relayed, proxy_protocol::v2);
    REQUIRE(r.status == proxy_parse_result::done);
    CHECK(r.header.length == 28);
    CHECK(r.header.command == proxy_command::proxy);
    CHECK(r.header.source == address::ipv4("127.0.0.2", 52983));
    CHECK(r.header.destination == address::ipv4("127.0.0.1", 56247));
    const std::string check("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", 16);
    auto c = parse(check, proxy_protocol::v2);
    REQUIRE(c.status == proxy_parse_result::done);
    CHECK(c.header.length == 16);
    CHECK(c.header.command == proxy_command::local);
}

TEST_CASE("parsing allocates nothing, whatever the header", "[proxy]") {
    std::string long_path(107, 'p');
    const std::vector<std::string> inputs{
        "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
        "PROXY UNKNOWN\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "PROXY TCP4 1.2.3.4",
        v2(0x21, 0x11, v4_block + tlv(0x01, "h2") + tlv(0x02, "example.com")),
        v2(0x21, 0x21, v6_block()),
        v2(0x21, 0x31, unix_block(long_path, long_path)),
        v2(0x20, 0x00, ""),
        v2(0x21, 0x11, v4_block + tlv(0x01, "h2").substr(0, 4)),
        "GET / HTTP/1.1\r\n",
    };
    std::size_t done = 0;
    counting = true;
    for (const auto& input : inputs) {
        auto r = parse_proxy_header(as_bytes(input), proxy_protocol::either);  // no copy
        done += r.status == proxy_parse_result::done ? 1 : 0;
    }
    counting = false;
    CHECK(allocations == 0);
    CHECK(done == 7);
}
