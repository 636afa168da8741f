// SPDX-License-Identifier: MIT
// The drain knows where messages begin: a peer in the middle of a message is never cut, an idle
// one is ended at once (test/support/drain_server.cpp as a real process, SIGTERM as the drain).
#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/process.hpp"
#include "support/serve_helpers.hpp"
#include "support/temp_file.hpp"
#if NETLOOP_HAS_TLS
#include "support/test_certs.hpp"
#endif

using namespace std::chrono_literals;
using netloop::address;
using netloop::connection;
using netloop::errc;
using netloop::task;
using netloop::test::child_process;
using netloop::test::eventually;
using netloop::test::failure_of;
using netloop::test::kind_of;
using netloop::test::pattern;
using netloop::test::read_n;
using netloop::test::run_bounded;
using netloop::test::temp_file;

namespace {

// The pause inside a message across the drain's start: longer than the 250 ms the drain used to
// wait before calling a silent connection idle, far shorter than the server's 60 s drain timeout.
constexpr auto pause_mid_message = 600ms;

std::string server_path() {
    const char* dir = std::getenv("NETLOOP_TEST_DIR");
    return std::string(dir != nullptr ? dir : "test") + "/drain_server";
}

std::vector<std::string> server_args(std::vector<std::string> flags) {
    std::vector<std::string> argv{server_path(), "127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
}

std::vector<std::byte> vec(const std::string& s) {
    auto b = std::as_bytes(std::span(s.data(), s.size()));
    return {b.begin(), b.end()};
}

std::vector<std::byte> length_prefixed(std::size_t size) {
    auto out = pattern(4 + size, 3);
    for (int i = 0; i < 4; ++i) out[static_cast<std::size_t>(i)] = std::byte(size >> (24 - 8 * i));
    return out;
}

// Connects until refused (the drain has begun: the listener is closed), at most 10 s.
task<bool> refused_soon(address to) {
    auto until = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < until) {
        auto [kind, sys] = co_await failure_of(netloop::connect(to, 5s));
        if (kind == errc::connect_failed && sys == ECONNREFUSED) co_return true;
        co_await netloop::test::sleep_for(10ms);
    }
    co_return false;
}

// What one drain trial saw, in order.
struct trial {
    bool served_before = false;     // the idle client was answered before the drain
    bool refused = false;           // the drain began (connects refused)
    errc idle_end{};                // how the idle client's next read ended
    bool idle_ended_first = false;  // ...before the busy client sent the rest of its message
    std::vector<std::byte> reply;   // what the busy client got for its message
    errc busy_end{};                // how the busy client's next read ended
};

// One client idle between messages and one that sends `first`, then — after SIGTERM, once the
// drain has begun, and a pause — `rest`, and reads `reply_size` bytes back.
trial drain_across(child_process& server, const std::vector<std::byte>& first,
                   const std::vector<std::byte>& rest, std::size_t reply_size,
                   const std::vector<std::byte>& idle_message,
                   std::optional<std::vector<std::byte>> idle_reply = std::nullopt) {
    if (!idle_reply) idle_reply = idle_message;
    auto port = server.announced_port();
    REQUIRE(port != 0);
    return run_bounded(
        [&]() -> task<trial> {
            trial t;
            auto to = address::ipv4("127.0.0.1", port);
            auto idle = co_await netloop::connect(to, 5s);
            co_await idle.write(idle_message, 5s);
            auto echoed = co_await read_n(idle, idle_reply->size(), 5s);
            t.served_before = echoed == *idle_reply;
            auto busy = co_await netloop::connect(to, 5s);
            co_await busy.write(first, 5s);
            server.signal(SIGTERM);
            t.refused = co_await refused_soon(to);
            std::array<std::byte, 16> buf{};
            // Far below the 60 s drain timeout: only a drain that ends idle connections at
            // once ends this read.
            t.idle_end = co_await kind_of(idle.read(buf, 10s));
            t.idle_ended_first = true;
            co_await netloop::test::sleep_for(pause_mid_message);
            co_await busy.write(rest, 5s);
            try {
                t.reply = co_await read_n(busy, reply_size, 10s);
            } catch (const netloop::error&) {
            }
            t.busy_end = co_await kind_of(busy.read(buf, 10s));
            co_return t;
        },
        40s);
}

void check_drained(const trial& t, const std::vector<std::byte>& expected, child_process& server,
                   const temp_file& err) {
    CAPTURE(err.contents());
    CHECK(t.served_before);
    CHECK(t.refused);
    CHECK(t.idle_end == errc::connection_closed);
    CHECK(t.idle_ended_first);
    CHECK(t.reply == expected);
    CHECK(t.busy_end == errc::connection_closed);  // ended at the boundary after its reply
    CHECK(server.exited_with(0, 10s));
}

}  // namespace

TEST_CASE(
    "a drain lets a length-prefixed message begun before it finish: a pause mid-body, then the "
    "reply",
    "[drain][process]") {
    temp_file err;
    child_process server(server_args({"--frame", "exact"}), {}, err.path());
    auto message = length_prefixed(1000);
    std::vector<std::byte> first(message.begin(), message.begin() + 4 + 500);
    std::vector<std::byte> rest(message.begin() + 4 + 500, message.end());
    auto t = drain_across(server, first, rest, message.size(), length_prefixed(10));
    check_drained(t, message, server, err);
}

TEST_CASE("a drain lets a length-prefixed message finish whose header stopped half-way",
          "[drain][process]") {
    temp_file err;
    child_process server(server_args({"--frame", "exact"}), {}, err.path());
    auto message = length_prefixed(1000);
    std::vector<std::byte> first(message.begin(), message.begin() + 2);
    std::vector<std::byte> rest(message.begin() + 2, message.end());
    auto t = drain_across(server, first, rest, message.size(), length_prefixed(10));
    check_drained(t, message, server, err);
}

TEST_CASE("a drain lets a read_until line begun before it finish: a pause mid-line, then the reply",
          "[drain][process]") {
    temp_file err;
    child_process server(server_args({"--frame", "line"}), {}, err.path());
    auto t = drain_across(server, vec("hel"), vec("lo, drain\n"), 13, vec("idle\n"));
    check_drained(t, vec("hello, drain\n"), server, err);
}

TEST_CASE(
    "a drain lets a PROXY header sent slowly across its start finish, and the client is served",
    "[drain][process]") {
    temp_file err;
    child_process server(server_args({"--frame", "line", "--proxy"}), {}, err.path());
    std::string header = "PROXY TCP4 127.0.0.7 127.0.0.1 50000 8080\r\n";
    // The idle client's echo is its line alone: the header is not part of the stream.
    auto t = drain_across(
        server, vec(header.substr(0, 20)), vec(header.substr(20) + "behind a balancer\n"), 18,
        vec("PROXY TCP4 127.0.0.8 127.0.0.1 50001 8080\r\nidle\n"), vec("idle\n"));
    check_drained(t, vec("behind a balancer\n"), server, err);
}

#if NETLOOP_HAS_TLS
namespace {

// Relays one TLS client to the server, holding the client's bytes after the first `hold_after`
// until `gate` is cancelled: a handshake sent slowly, across the drain's start. Shared with its
// tasks, which netloop::spawn cancels when the test's coroutine ends.
struct slow_relay {
    slow_relay(asio::any_io_executor ex, address to)
        : acceptor(ex, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
          server(std::move(to)),
          gate(ex, std::chrono::steady_clock::time_point::max()) {}
    asio::ip::tcp::acceptor acceptor;
    address server;
    asio::steady_timer gate;
    std::size_t hold_after = 20;
    bool held = false;  // the first bytes went through and the rest waits
    std::optional<asio::ip::tcp::socket> client;
    std::optional<asio::ip::tcp::socket> upstream;
};

task<> pump(std::shared_ptr<slow_relay> r, asio::ip::tcp::socket& from, asio::ip::tcp::socket& to,
            bool hold) {
    std::array<std::byte, 16384> buf{};
    std::size_t passed = 0;
    for (;;) {
        asio::error_code ec;
        auto n = co_await from.async_read_some(asio::buffer(buf),
                                               asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        std::size_t sent = 0;
        if (hold && passed < r->hold_after) {
            sent = std::min(n, r->hold_after - passed);
            ec = co_await netloop::test::raw_write(to, std::span(buf).first(sent));
            if (ec) break;
            passed += sent;
            if (passed == r->hold_after) {
                r->held = true;
                asio::error_code released;
                co_await r->gate.async_wait(asio::redirect_error(asio::use_awaitable, released));
            }
        }
        if (sent < n) {
            ec = co_await netloop::test::raw_write(to, std::span(buf).subspan(sent, n - sent));
            if (ec) break;
        }
    }
    asio::error_code ignored;
    to.shutdown(asio::socket_base::shutdown_send, ignored);
}

task<> relay_one(std::shared_ptr<slow_relay> r) {
    r->client.emplace(co_await r->acceptor.async_accept(asio::use_awaitable));
    r->upstream.emplace(co_await netloop::test::raw_connect(r->server, 5s));
    netloop::spawn(pump(r, *r->upstream, *r->client, false));
    co_await pump(r, *r->client, *r->upstream, true);
}

struct tls_client {
    std::optional<connection> conn;
    bool done = false;
};

task<> connect_tls(std::shared_ptr<tls_client> c, address to, netloop::tls_context tls) {
    try {
        c->conn.emplace(co_await netloop::connect(to, tls, 20s));
    } catch (const netloop::error&) {
    }
    c->done = true;
}

}  // namespace

TEST_CASE(
    "a drain lets a TLS handshake sent slowly across its start finish, and the client is served",
    "[drain][process][tls]") {
    using netloop::test::pki;
    temp_file err, cert, key;
    cert.write(pki().leaf.cert);
    key.write(pki().leaf.key);
    child_process server(server_args({"--frame", "line", "--tls", cert.path(), key.path()}), {},
                         err.path());
    auto port = server.announced_port();
    REQUIRE(port != 0);
    struct result {
        bool held = false;
        bool refused = false;
        std::string reply;
        errc end{};
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = address::ipv4("127.0.0.1", port);
            auto relay = std::make_shared<slow_relay>(co_await asio::this_coro::executor, to);
            auto relay_at = address::ipv4("127.0.0.1", relay->acceptor.local_endpoint().port());
            netloop::spawn(relay_one(relay));
            auto client_tls = netloop::tls_context::client();
            client_tls.trust_pem(pki().ca.cert);
            auto client = std::make_shared<tls_client>();
            netloop::spawn(connect_tls(client, relay_at, client_tls));
            r.held = co_await eventually([&] { return relay->held; }, 10s);
            server.signal(SIGTERM);
            r.refused = co_await refused_soon(to);
            co_await netloop::test::sleep_for(pause_mid_message);
            relay->gate.cancel();
            (void)co_await eventually([&] { return client->done; }, 20s);
            if (client->conn) {
                auto& c = *client->conn;
                try {
                    co_await c.write(std::string_view("over TLS\n"), 5s);
                    auto back = co_await read_n(c, 9, 5s);
                    r.reply = netloop::test::text(back);
                } catch (const netloop::error&) {
                }
                std::array<std::byte, 16> buf{};
                r.end = co_await kind_of(c.read(buf, 10s));
                c.close();
            }
            co_return r;
        },
        40s);
    CAPTURE(err.contents());
    CHECK(r.held);
    CHECK(r.refused);
    CHECK(r.reply == "over TLS\n");
    CHECK(r.end == errc::connection_closed);
    CHECK(server.exited_with(0, 10s));
}
#endif
