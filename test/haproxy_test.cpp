// SPDX-License-Identifier: MIT
// A real HAProxy (Debian's haproxy, samples/haproxy/haproxy.cfg) in front of two samples/daemon
// backends that read its PROXY v2 header: client addresses, per-IP limits, echo, a drain.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/process.hpp"
#include "support/serve_helpers.hpp"
#include "support/temp_file.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::task;
using netloop::test::child_process;
using netloop::test::run_bounded;
using netloop::test::temp_file;

namespace {

using bytes = std::vector<std::byte>;
constexpr const char* haproxy_binary = "/usr/sbin/haproxy";

// A port on 127.0.0.1 that was free a moment ago (HAProxy cannot announce the one it bound).
std::uint16_t free_port() {
    asio::io_context io;
    asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return a.local_endpoint().port();
}

// A samples/daemon backend behind HAProxy: PROXY v2 from loopback, debug logs in `err`.
struct backend {
    explicit backend(const std::vector<std::string>& extra) : process(args(extra), {}, err.path()) {
        port = process.announced_port();
    }
    static std::vector<std::string> args(const std::vector<std::string>& extra) {
        std::vector<std::string> argv{netloop::test::sample_path("daemon"),
                                      "127.0.0.1:0",
                                      "--proxy-protocol",
                                      "v2",
                                      "--log-level",
                                      "debug"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        return argv;
    }
    temp_file err;
    child_process process;
    std::uint16_t port = 0;
};

// HAProxy with samples/haproxy/haproxy.cfg, its addresses from the environment; stopped by PID.
struct balancer {
    balancer(std::uint16_t b1, std::uint16_t b2)
        : port(free_port()),
          process({haproxy_binary, "-db", "-f", config_path()},
                  {"FRONTEND=127.0.0.1:" + std::to_string(port),
                   "BACKEND1=127.0.0.1:" + std::to_string(b1),
                   "BACKEND2=127.0.0.1:" + std::to_string(b2)},
                  err.path()) {}
    ~balancer() {
        process.signal(SIGTERM);
        (void)process.wait(5s);  // the child_process destructor kills it if it lingers
    }
    static std::string config_path() {
        const char* src = std::getenv("NETLOOP_SOURCE_DIR");
        return std::string(src != nullptr ? src : ".") + "/samples/haproxy/haproxy.cfg";
    }
    [[nodiscard]] address at() const { return address::ipv4("127.0.0.1", port); }
    std::uint16_t port;
    temp_file err;
    child_process process;
};

// Connects to HAProxy until it accepts (it binds a moment after it starts); bounded.
task<bool> ready(const balancer& b) {
    auto until = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < until) {
        try {
            auto s = co_await netloop::test::raw_connect(b.at(), 2s);
            co_return true;
        } catch (const std::system_error&) {
        }
        co_await netloop::test::sleep_for(20ms);
    }
    co_return false;
}

// One client from `source` through HAProxy: connected, kept open by the caller.
task<asio::ip::tcp::socket> client(const balancer& b, const std::string& source) {
    co_return co_await netloop::test::raw_connect(b.at(), 5s, source);
}

// Sends `out` and reads as many bytes back; true if they are the same bytes.
task<bool> echoed(asio::ip::tcp::socket& s, const bytes& out) {
    auto ec = co_await netloop::test::raw_write(s, out, 10s);
    if (ec) co_return false;
    bytes back(out.size());
    ec = co_await netloop::test::raw_read(s, back, 10s);
    co_return !ec && back == out;
}

// How many times `what` occurs in `text`.
std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

bool haproxy_installed() { return ::access(haproxy_binary, X_OK) == 0; }

// Connects to `to` until the connect is refused (the backend has stopped listening), for at most
// 10 s; a connect that still succeeds is closed at once. True if refused.
task<bool> refused_soon(address to) {
    auto until = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < until) {
        try {
            auto s = co_await netloop::test::raw_connect(to, 2s);
        } catch (const std::system_error& e) {
            if (e.code() == asio::error::connection_refused) co_return true;
        }
        co_await netloop::test::sleep_for(10ms);
    }
    co_return false;
}

}  // namespace

TEST_CASE(
    "through HAProxy each backend sees each client's own address, admits one connection "
    "per client address, and echoes byte for byte",
    "[samples][haproxy]") {
    REQUIRE(haproxy_installed());  // scripts/setup installs it (package haproxy)
    backend b1({"--max-connections-per-ip", "1"});
    backend b2({"--max-connections-per-ip", "1"});
    REQUIRE(b1.port != 0);
    REQUIRE(b2.port != 0);
    balancer lb(b1.port, b2.port);
    auto r = run_bounded(
        [&]() -> task<std::vector<std::string>> {
            std::vector<std::string> out;
            if (!co_await ready(lb)) co_return std::vector<std::string>{"haproxy not ready"};
            // Four clients from four loopback addresses, each held open: all four are admitted,
            // though HAProxy connects to the backends from one address.
            std::vector<asio::ip::tcp::socket> held;
            for (int i = 2; i <= 5; ++i) {
                auto source = "127.0.0." + std::to_string(i);
                held.push_back(co_await client(lb, source));
                auto data = netloop::test::pattern(100000, static_cast<unsigned>(i));
                out.push_back(source + (co_await echoed(held.back(), data) ? " echoed" : " lost"));
            }
            // Two more from 127.0.0.2 go to the two backends in turn: the one that already
            // holds 127.0.0.2's connection refuses it (HAProxy's client reads EOF), the other
            // admits it.
            std::size_t admitted = 0;
            std::size_t refused = 0;
            for (int i = 0; i < 2; ++i) {
                auto again = co_await client(lb, "127.0.0.2");
                auto ec = co_await netloop::test::raw_write(again, netloop::test::pattern(1), 5s);
                bytes one(1);
                if (!ec) ec = co_await netloop::test::raw_read(again, one, 10s);
                (ec ? refused : admitted) += 1;
                held.push_back(std::move(again));
            }
            out.push_back("again from 127.0.0.2: " + std::to_string(admitted) + " admitted, " +
                          std::to_string(refused) + " refused");
            co_return out;
        },
        60s);
    CHECK(r == std::vector<std::string>{"127.0.0.2 echoed", "127.0.0.3 echoed", "127.0.0.4 echoed",
                                        "127.0.0.5 echoed",
                                        "again from 127.0.0.2: 1 admitted, 1 refused"});
    // Each backend logged the clients it served by their own address (round-robin: two each),
    // relayed by HAProxy from 127.0.0.1, and the one refusal by the client's address.
    auto log1 = b1.err.contents();
    auto log2 = b2.err.contents();
    CAPTURE(log1, log2);
    for (int i = 2; i <= 5; ++i) {
        auto line = "] client 127.0.0." + std::to_string(i) + ":";
        CHECK(count(log1, line) + count(log2, line) >= 1);
    }
    CHECK(count(log1, " via 127.0.0.1:") >= 2);
    CHECK(count(log2, " via 127.0.0.1:") >= 2);
    CHECK(count(log1 + log2, "rejected 127.0.0.2:") == 1);
    b1.process.signal(SIGTERM);
    b2.process.signal(SIGTERM);
    CHECK(b1.process.exited_with(0, 20s));
    CHECK(b2.process.exited_with(0, 20s));
}

TEST_CASE(
    "SIGTERM to one backend behind HAProxy loses nothing accepted, and new connections go "
    "to the other",
    "[samples][haproxy]") {
    REQUIRE(haproxy_installed());
    backend b1({"--drain-timeout", "30"});
    backend b2({"--drain-timeout", "30"});
    REQUIRE(b1.port != 0);
    REQUIRE(b2.port != 0);
    balancer lb(b1.port, b2.port);
    struct stream_state {
        std::size_t rounds = 0;
        bool done = false;
        bool intact = true;
    };
    auto r = run_bounded(
        [&]() -> task<std::vector<std::string>> {
            std::vector<std::string> out;
            if (!co_await ready(lb)) co_return std::vector<std::string>{"haproxy not ready"};
            // Four clients stream through HAProxy (two on each backend): a message, its echo,
            // the next, with no pause, until `stop` rounds after the SIGTERM.
            auto terminated = std::make_shared<bool>(false);
            std::vector<std::shared_ptr<stream_state>> streams;
            for (int i = 2; i <= 5; ++i) {
                auto st = std::make_shared<stream_state>();
                streams.push_back(st);
                auto sock = std::make_shared<asio::ip::tcp::socket>(
                    co_await client(lb, "127.0.0." + std::to_string(i)));
                auto stream = [](std::shared_ptr<asio::ip::tcp::socket> s,
                                 std::shared_ptr<stream_state> st, std::shared_ptr<bool> terminated,
                                 unsigned seed) -> task<> {
                    std::size_t after = 0;
                    while (!*terminated || after < 20) {
                        auto data = netloop::test::pattern(4096, seed + st->rounds);
                        if (!co_await echoed(*s, data)) {
                            st->intact = false;
                            break;
                        }
                        ++st->rounds;
                        if (*terminated) ++after;
                    }
                    asio::error_code ignored;
                    s->close(ignored);
                    st->done = true;
                };
                netloop::spawn(stream(sock, st, terminated, static_cast<unsigned>(i)));
            }
            auto all = [&](auto pred) {
                return std::all_of(streams.begin(), streams.end(),
                                   [&](const auto& st) { return pred(*st); });
            };
            co_await netloop::test::eventually(
                [&] { return all([](const stream_state& st) { return st.rounds >= 5; }); });
            b1.process.signal(SIGTERM);
            *terminated = true;
            // Once b1 has closed its listener (at once on SIGTERM), every new connection is
            // HAProxy's to place.
            out.push_back(co_await refused_soon(address::ipv4("127.0.0.1", b1.port))
                              ? "b1 stopped listening"
                              : "b1 still listening");
            // New clients, while b1 drains: HAProxy's connect to b1 is refused, so it retries
            // on b2 (redispatch) until its health checks take b1 out.
            for (int i = 10; i <= 15; ++i) {
                auto source = "127.0.0." + std::to_string(i);
                auto s = co_await client(lb, source);
                out.push_back(source + (co_await echoed(s, netloop::test::pattern(1000, 7))
                                            ? " served"
                                            : " lost"));
            }
            co_await netloop::test::eventually(
                [&] { return all([](const stream_state& st) { return st.done; }); }, 30s);
            for (const auto& st : streams) {
                out.push_back(st->done && st->intact ? "stream intact" : "stream broken");
            }
            co_return out;
        },
        90s);
    CHECK(r == std::vector<std::string>{"b1 stopped listening", "127.0.0.10 served",
                                        "127.0.0.11 served", "127.0.0.12 served",
                                        "127.0.0.13 served", "127.0.0.14 served",
                                        "127.0.0.15 served", "stream intact", "stream intact",
                                        "stream intact", "stream intact"});
    // The drained backend ended cleanly once its streams closed; the new clients all reached
    // the other one.
    CHECK(b1.process.exited_with(0, 30s));
    auto log1 = b1.err.contents();
    auto log2 = b2.err.contents();
    CAPTURE(log1, log2);
    for (int i = 10; i <= 15; ++i) {
        auto line = "] client 127.0.0." + std::to_string(i) + ":";
        CHECK(count(log1, line) == 0);
        CHECK(count(log2, line) == 1);
    }
    // Each backend carried streams before the SIGTERM.
    CHECK(count(log1, "] client 127.0.0.") - count(log1, "] client 127.0.0.1:") >= 1);
    b2.process.signal(SIGTERM);
    CHECK(b2.process.exited_with(0, 20s));
}
