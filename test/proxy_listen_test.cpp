// SPDX-License-Identifier: MIT
// A listener behind a load balancer: the PROXY protocol header read before next() or the
// handler, the client's address, bad headers that cost one connection, trust, per-IP limits.
#include <cstring>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include <netloop/config.hpp>
#include <netloop/netloop.hpp>

#if NETLOOP_HAS_TLS
#include <asio/ssl.hpp>
#endif

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/serve_helpers.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::listen_options;
using netloop::proxy_protocol;
using netloop::serve_options;
using netloop::server;
using netloop::task;
using netloop::test::run_bounded;

namespace {

using bytes = std::vector<std::byte>;

bytes of(std::string_view s) {
    bytes out(s.size());
    std::memcpy(out.data(), s.data(), s.size());
    return out;
}

bytes operator+(bytes a, const bytes& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// A v2 header: PROXY over TCP/IPv4 from `src`:`sport` to `dst`:`dport`, or LOCAL.
bytes v2(const std::string& src, std::uint16_t sport, const std::string& dst = "127.0.0.1",
         std::uint16_t dport = 80, bool local = false) {
    bytes out = of(std::string_view("\r\n\r\n\0\r\nQUIT\n", 12));
    auto push = [&](unsigned v) { out.push_back(static_cast<std::byte>(v)); };
    if (local) {
        for (unsigned v : {0x20U, 0x00U, 0x00U, 0x00U}) push(v);
        return out;
    }
    for (unsigned v : {0x21U, 0x11U, 0x00U, 12U}) push(v);
    for (const auto& a : {src, dst}) {
        for (auto b : asio::ip::make_address_v4(a).to_bytes()) push(b);
    }
    for (unsigned p : {sport, dport}) {
        push(p >> 8);
        push(p & 0xff);
    }
    return out;
}

bytes v1(const std::string& src, std::uint16_t sport) {
    return of("PROXY TCP4 " + src + " 127.0.0.1 " + std::to_string(sport) + " 80\r\n");
}

// What each handler saw: "remote via proxy" (proxy: "-" when none).
struct seen {
    std::vector<std::string> peers;
};

// Records the connection's addresses, then echoes until the peer closes.
netloop::connection_handler recording_echo(std::shared_ptr<seen> s) {
    return [s](netloop::connection c) -> task<> {
        auto proxy = c.proxy_address();
        s->peers.push_back(c.remote_address().to_string() + " via " +
                           (proxy ? proxy->to_string() : std::string("-")));
        co_await netloop::test::echo_until_closed(std::move(c));
    };
}

std::string local_of(const asio::ip::tcp::socket& s) {
    return address(s.local_endpoint()).to_string();
}

// Connects from `source`, sends `header + payload` in one write, and reads back `payload`.
task<std::string> echo_through(const server& s, const bytes& header, std::string_view payload,
                               const std::string& source = "127.0.0.1",
                               std::string* from = nullptr) {
    auto sock = co_await netloop::test::raw_connect(s.local_address(), 5s, source);
    if (from != nullptr) *from = local_of(sock);
    auto ec = co_await netloop::test::raw_write(sock, header + of(payload), 5s);
    if (ec) co_return "write: " + ec.message();
    bytes back(payload.size());
    ec = co_await netloop::test::raw_read(sock, back, 5s);
    if (ec) co_return "read: " + ec.message();
    co_return netloop::test::text(back);
}

// Connects, sends `sent` and reads until the server closes: true if it did (EOF or a reset)
// without echoing anything.
task<bool> refused(const server& s, const bytes& sent, const std::string& source = "127.0.0.1") {
    auto sock = co_await netloop::test::raw_connect(s.local_address(), 5s, source);
    if (!sent.empty()) (void)co_await netloop::test::raw_write(sock, sent, 5s);
    bytes back;
    auto ec = co_await netloop::test::raw_read_to_end(sock, back, 10s);
    co_return back.empty() && (ec == asio::error::eof || ec == asio::error::connection_reset);
}

}  // namespace

TEST_CASE(
    "behind a v1 or v2 header, the handler sees the client's address and the bytes after "
    "the header intact",
    "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = server::listen(address::parse("127.0.0.1:0"),
                                listen_options{.proxy_protocol = proxy_protocol::either});
        auto rec = std::make_shared<seen>();
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, recording_echo(rec), {}, serving));
        std::vector<std::string> out;
        std::string from;
        out.push_back(
            co_await echo_through(s, v1("192.0.2.1", 40001), "after v1\r\n", "127.0.0.1", &from));
        out.push_back(rec->peers.at(0) == "192.0.2.1:40001 via " + from ? "v1 client"
                                                                        : rec->peers.at(0));
        out.push_back(co_await echo_through(s, v2("192.0.2.2", 40002), "\r\n\r\nafter v2",
                                            "127.0.0.1", &from));
        out.push_back(rec->peers.at(1) == "192.0.2.2:40002 via " + from ? "v2 client"
                                                                        : rec->peers.at(1));
        out.push_back(
            co_await echo_through(s, v2("", 0, "", 0, true), "local", "127.0.0.1", &from));
        out.push_back(rec->peers.at(2) == from + " via -" ? "LOCAL keeps the peer"
                                                          : rec->peers.at(2));
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        out.push_back(std::to_string(s.stats().proxy_failures));
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"after v1\r\n", "v1 client", "\r\n\r\nafter v2",
                                        "v2 client", "local", "LOCAL keeps the peer", "0"});
}

TEST_CASE(
    "next() hands out a connection only after its header, and a silent client delays "
    "nobody",
    "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = server::listen(address::parse("127.0.0.1:0"),
                                listen_options{.proxy_protocol = proxy_protocol::v2});
        std::vector<std::string> out;
        auto silent = co_await netloop::test::raw_connect(s.local_address(), 5s);
        auto sock = co_await netloop::test::raw_connect(s.local_address(), 5s);
        (void)co_await netloop::test::raw_write(sock, v2("198.51.100.9", 5000) + of("hi"), 5s);
        auto conn = co_await s.connections().next();
        out.push_back(conn ? conn->remote_address().to_string() : "none");
        out.push_back(conn && conn->proxy_address()
                          ? conn->proxy_address()->to_string() == local_of(sock)
                                ? "proxy is the raw client"
                                : conn->proxy_address()->to_string()
                          : "no proxy address");
        if (conn) out.push_back(netloop::test::text(co_await netloop::test::read_n(*conn, 2, 5s)));
        s.close();
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"198.51.100.9:5000", "proxy is the raw client", "hi"});
}

TEST_CASE(
    "each bad header costs only its connection and is counted; another client is served "
    "meanwhile",
    "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = server::listen(address::parse("127.0.0.1:0"),
                                listen_options{.proxy_protocol = proxy_protocol::either,
                                               .proxy_header_timeout = 500ms});
        auto rec = std::make_shared<seen>();
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, recording_echo(rec), {}, serving));
        std::vector<std::string> out;
        // Truncated, then silent: the header's timeout closes it. Meanwhile a good client is
        // served.
        auto stalled = co_await netloop::test::raw_connect(s.local_address(), 5s);
        auto partial = v2("192.0.2.3", 1);
        partial.resize(20);
        (void)co_await netloop::test::raw_write(stalled, partial, 5s);
        out.push_back(co_await echo_through(s, v1("192.0.2.4", 2), "served"));
        bytes back;
        auto ec = co_await netloop::test::raw_read_to_end(stalled, back, 10s);
        out.push_back(ec == asio::error::eof && back.empty() ? "truncated: closed" : ec.message());
        // A v1 line with no CRLF within 107 bytes.
        out.push_back(co_await refused(s, of("PROXY TCP4 " + std::string(120, '1')))
                          ? "oversized v1"
                          : "served");
        // A v2 header longer than the listener's limit.
        auto big = v2("192.0.2.5", 3);
        big[14] = std::byte{0x20};  // length 0x200c: over 4096
        out.push_back(co_await refused(s, big) ? "oversized v2" : "served");
        auto wrong = v2("192.0.2.6", 4);
        wrong[7] = std::byte{'X'};
        out.push_back(co_await refused(s, wrong) ? "wrong signature" : "served");
        auto short_block = v2("192.0.2.7", 5);
        short_block[15] = std::byte{5};  // TCP4 with a 5-byte address block
        out.push_back(co_await refused(s, short_block) ? "wrong length" : "served");
        auto family = v2("192.0.2.8", 6);
        family[13] = std::byte{0x41};  // family 4: none such
        out.push_back(co_await refused(s, family) ? "wrong family" : "served");
        out.push_back(co_await refused(s, of("GET / HTTP/1.1\r\n\r\n")) ? "missing header"
                                                                        : "served");
        // A slow drip: one byte of a valid header at a time, past the timeout.
        auto drip = co_await netloop::test::raw_connect(s.local_address(), 5s);
        auto header = v1("192.0.2.9", 7);
        bool closed = false;
        for (std::size_t i = 0; i < header.size() && !closed; ++i) {
            auto wec = co_await netloop::test::raw_write(drip, std::span(header).subspan(i, 1), 5s);
            co_await netloop::test::sleep_for(100ms);
            closed = wec.operator bool();
        }
        back.clear();
        ec = co_await netloop::test::raw_read_to_end(drip, back, 10s);
        out.push_back((ec == asio::error::eof || ec == asio::error::connection_reset) &&
                              back.empty()
                          ? "slow drip: closed"
                          : ec.message());
        co_await netloop::test::eventually([&] { return s.stats().proxy_failures == 8; });
        out.push_back(std::to_string(s.stats().proxy_failures));
        out.push_back(std::to_string(rec->peers.size()));
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"served", "truncated: closed", "oversized v1",
                                        "oversized v2", "wrong signature", "wrong length",
                                        "wrong family", "missing header", "slow drip: closed", "8",
                                        "1"});
}

TEST_CASE("a header from a source outside proxy_from is refused and counted", "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s =
            server::listen(address::parse("127.0.0.1:0"),
                           listen_options{.proxy_protocol = proxy_protocol::v2,
                                          .proxy_from = netloop::parse_networks("127.0.0.1/32")});
        auto rec = std::make_shared<seen>();
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, recording_echo(rec), {}, serving));
        std::vector<std::string> out;
        out.push_back(co_await refused(s, v2("192.0.2.10", 10) + of("x"), "127.0.0.2")
                          ? "127.0.0.2 refused"
                          : "127.0.0.2 served");
        out.push_back(co_await echo_through(s, v2("192.0.2.11", 11), "trusted"));
        co_await netloop::test::eventually([&] { return s.stats().proxy_failures == 1; });
        out.push_back(std::to_string(s.stats().proxy_failures));
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"127.0.0.2 refused", "trusted", "1"});
}

TEST_CASE(
    "max_connections_per_ip counts the client's address from the header, not the "
    "balancer's",
    "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = server::listen(address::parse("127.0.0.1:0"),
                                listen_options{.proxy_protocol = proxy_protocol::v2});
        auto rec = std::make_shared<seen>();
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(
            s, recording_echo(rec), serve_options{.max_connections_per_ip = 1}, serving));
        std::vector<std::string> out;
        // Two clients through the same balancer address, each held open.
        auto a = co_await netloop::test::raw_connect(s.local_address(), 5s);
        (void)co_await netloop::test::raw_write(a, v2("192.0.2.20", 1) + of("a"), 5s);
        auto b = co_await netloop::test::raw_connect(s.local_address(), 5s);
        (void)co_await netloop::test::raw_write(b, v2("192.0.2.21", 1) + of("b"), 5s);
        bytes one(1);
        auto ec = co_await netloop::test::raw_read(a, one, 5s);
        out.push_back(ec ? ec.message() : netloop::test::text(one));
        ec = co_await netloop::test::raw_read(b, one, 5s);
        out.push_back(ec ? ec.message() : netloop::test::text(one));
        // A second connection of the first client is over its limit.
        out.push_back(co_await refused(s, v2("192.0.2.20", 2) + of("c")) ? "second of .20 refused"
                                                                         : "served");
        out.push_back(std::to_string(s.stats().rejected));
        s.close();
        a.close();
        b.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"a", "b", "second of .20 refused", "1"});
}

TEST_CASE("serve() with threads = 2 reads the header on every loop, hand_off and reuse_port",
          "[proxy_listen]") {
    for (auto balance : {netloop::balance_mode::hand_off, netloop::balance_mode::reuse_port}) {
        CAPTURE(static_cast<int>(balance));
        auto r = run_bounded([balance]() -> task<std::vector<std::string>> {
            auto s = server::listen(
                address::parse("127.0.0.1:0"),
                listen_options{.reuse_port = true, .proxy_protocol = proxy_protocol::v2});
            netloop::test::serve_outcome serving;
            auto handler = [](netloop::connection c) -> task<> {
                auto who = c.remote_address().to_string() + "\n";
                co_await c.write(who, 5s);
                co_await netloop::test::echo_until_closed(std::move(c));
            };
            netloop::spawn(netloop::test::serve_into(
                s, handler, serve_options{.threads = 2, .balance = balance}, serving));
            std::vector<std::string> out;
            for (int i = 1; i <= 6; ++i) {
                auto client = "192.0.2." + std::to_string(30 + i);
                auto sock = co_await netloop::test::raw_connect(s.local_address(), 5s);
                (void)co_await netloop::test::raw_write(sock, v2(client, 1000), 5s);
                auto expect = client + ":1000\n";
                bytes back(expect.size());
                auto ec = co_await netloop::test::raw_read(sock, back, 5s);
                out.push_back(ec                                    ? ec.message()
                              : netloop::test::text(back) == expect ? "ok"
                                                                    : "wrong");
            }
            s.close();
            co_await netloop::test::eventually([&] { return serving.done; });
            out.push_back(std::to_string(s.stats().proxy_failures));
            co_return out;
        });
        CHECK(r == std::vector<std::string>{"ok", "ok", "ok", "ok", "ok", "ok", "0"});
    }
}

#if NETLOOP_HAS_TLS
TEST_CASE("TLS starts after the header: the handshake reads the bytes that follow it",
          "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = server::listen(address::parse("127.0.0.1:0"),
                                listen_options{.tls = netloop::test::test_server_tls(),
                                               .proxy_protocol = proxy_protocol::v2});
        auto rec = std::make_shared<seen>();
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, recording_echo(rec), {}, serving));
        std::vector<std::string> out;
        auto sock = co_await netloop::test::raw_connect(s.local_address(), 5s);
        (void)co_await netloop::test::raw_write(sock, v2("192.0.2.40", 443), 5s);
        asio::ssl::context ctx(asio::ssl::context::tls_client);
        ctx.set_verify_mode(asio::ssl::verify_none);
        asio::ssl::stream<asio::ip::tcp::socket&> tls(sock, ctx);
        asio::error_code ec;
        {
            netloop::test::socket_bound bound(sock, 5s);
            co_await tls.async_handshake(asio::ssl::stream_base::client,
                                         asio::redirect_error(asio::use_awaitable, ec));
        }
        out.push_back(ec ? "handshake: " + ec.message() : "handshake");
        {
            netloop::test::socket_bound bound(sock, 5s);
            co_await asio::async_write(tls, asio::buffer(std::string_view("secret")),
                                       asio::redirect_error(asio::use_awaitable, ec));
            std::string back(6, '\0');
            co_await asio::async_read(tls, asio::buffer(back),
                                      asio::redirect_error(asio::use_awaitable, ec));
            out.push_back(ec ? ec.message() : back);
        }
        out.push_back(rec->peers.empty() ? "none" : rec->peers.front().substr(0, 16));
        sock.close();
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"handshake", "secret", "192.0.2.40:443 v"});
}
#endif

TEST_CASE("a Unix listener reads the header too: a TCP client's address, or a Unix one",
          "[proxy_listen]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto at = address::unix_socket("@netloop-proxy-listen-" + std::to_string(::getpid()));
        auto s = server::listen(at, listen_options{.proxy_protocol = proxy_protocol::v2});
        auto rec = std::make_shared<seen>();
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, recording_echo(rec), {}, serving));
        std::vector<std::string> out;
        {
            auto c = co_await netloop::connect(at, 5s);
            co_await c.write(v2("192.0.2.50", 50) + of("tcp client"), 5s);
            out.push_back(netloop::test::text(co_await netloop::test::read_n(c, 10, 5s)));
        }
        {
            // v2, AF_UNIX over a stream: two 108-byte sun_path blocks.
            bytes header = of(std::string_view("\r\n\r\n\0\r\nQUIT\n\x21\x31\x00\xd8", 16));
            std::string src = "/run/client.sock";
            std::string dst = "/run/server.sock";
            for (const auto& p : {src, dst}) {
                auto block = of(p);
                block.resize(108);
                header = header + block;
            }
            auto c = co_await netloop::connect(at, 5s);
            co_await c.write(header + of("unix client"), 5s);
            out.push_back(netloop::test::text(co_await netloop::test::read_n(c, 11, 5s)));
        }
        out.insert(out.end(), rec->peers.begin(), rec->peers.end());
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"tcp client", "unix client", "192.0.2.50:50 via unix:",
                                        "unix:/run/client.sock via unix:"});
}
