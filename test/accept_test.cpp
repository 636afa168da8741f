// SPDX-License-Identifier: MIT
// The accept path under next() and serve(): many waiters on a TLS or PROXY listener, accept
// failures, the bound on connections in preparation, connections refused by a limit.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <string>
#include <sys/socket.h>
#include <vector>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>

#include <netloop/config.hpp>
#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/serve_helpers.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::listen_options;
using netloop::proxy_protocol;
using netloop::serve_options;
using netloop::server;
using netloop::task;
using netloop::test::eventually;
using netloop::test::run_bounded;

namespace {

using bytes = std::vector<std::byte>;

bytes of(std::string_view s) {
    bytes out(s.size());
    std::memcpy(out.data(), s.data(), s.size());
    return out;
}

bytes v1(const std::string& src, std::uint16_t sport) {
    return of("PROXY TCP4 " + src + " 127.0.0.1 " + std::to_string(sport) + " 80\r\n");
}

bytes v2(const std::string& src, std::uint16_t sport) {
    bytes out = of(std::string_view("\r\n\r\n\0\r\nQUIT\n", 12));
    auto push = [&](unsigned v) { out.push_back(static_cast<std::byte>(v)); };
    for (unsigned v : {0x21U, 0x11U, 0x00U, 12U}) push(v);
    for (const auto& a : {src, std::string("127.0.0.1")}) {
        for (auto b : asio::ip::make_address_v4(a).to_bytes()) push(b);
    }
    for (unsigned p : {unsigned{sport}, 80U}) {
        push(p >> 8);
        push(p & 0xff);
    }
    return out;
}

// A listener of `kind`: "proxy" (PROXY v1 header) or "tls"; "plain" has neither.
server listen_kind(const std::string& kind, listen_options options = {}) {
    if (kind == "proxy") options.proxy_protocol = proxy_protocol::v1;
#if NETLOOP_HAS_TLS
    if (kind == "tls") options.tls = netloop::test::test_server_tls();
#endif
    return server::listen(address::parse("127.0.0.1:0"), options);
}

#if NETLOOP_HAS_TLS
#define LISTENER_KINDS GENERATE(as<std::string>{}, "proxy", "tls")
#else
#define LISTENER_KINDS GENERATE(as<std::string>{}, "proxy")
#endif

// CPU time this process has used (every thread), a count rather than a clock reading.
std::chrono::nanoseconds cpu_used() {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// Connections waiting in a listening socket's accept queue (Linux: TCP_INFO on a listener
// reports the queue's length in tcpi_unacked).
int accept_queue(const server& s) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (::getsockopt(s.native_handle(), IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
    return static_cast<int>(info.tcpi_unacked);
}

// Descriptors this process holds.
int open_fds() {
    int n = 0;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/self/fd")) {
        ++n;
    }
    return n - 1;  // the iterator's own
}

// What the waiters of one test saw.
struct waiters_seen {
    std::vector<std::vector<std::string>> peers;  // per waiter, the remote address of each
    std::vector<netloop::connection> kept;        // kept open until the end
    std::size_t total = 0;
    std::size_t ended_with_nullopt = 0;
    std::size_t failed = 0;
};

// Awaits next() on its own stream until it yields nullopt, recording each connection.
task<> collect(server& s, std::shared_ptr<waiters_seen> seen, std::size_t index) {
    auto conns = s.connections();
    try {
        for (;;) {
            auto conn = co_await conns.next();
            if (!conn) break;
            seen->peers[index].push_back(conn->remote_address().to_string());
            ++seen->total;
            seen->kept.push_back(std::move(*conn));
        }
        ++seen->ended_with_nullopt;
    } catch (...) {
        ++seen->failed;
    }
}

// A client of a listener of `kind` whose server side will report `from` as its remote address
// (the header's source for "proxy"); the client socket or connection is kept in `keep`.
struct clients {
    std::vector<asio::ip::tcp::socket> raw;
    std::vector<netloop::connection> tls;
};

task<std::string> connect_one(const std::string& kind, const server& s, std::uint16_t n,
                              clients& keep) {
    if (kind == "proxy") {
        auto sock = co_await netloop::test::raw_connect(s.local_address(), 5s);
        auto header = v1("192.0.2.1", n);
        auto ec = co_await netloop::test::raw_write(sock, header, 5s);
        if (ec) throw std::system_error(ec, "write header");
        keep.raw.push_back(std::move(sock));
        co_return "192.0.2.1:" + std::to_string(n);
    }
#if NETLOOP_HAS_TLS
    auto conn = co_await netloop::connect(s.local_address(), netloop::test::test_client_tls(), 5s);
    auto from = conn.local_address().to_string();
    keep.tls.push_back(std::move(conn));
    co_return from;
#else
    throw std::logic_error("no TLS");
#endif
}

// Reads one byte and records "<remote> <byte>" in `served`.
task<> record_into(std::shared_ptr<std::vector<std::string>> served, netloop::connection c) {
    auto got = co_await netloop::test::read_n(c, 1, 5s);
    served->push_back(c.remote_address().to_string() + " " + netloop::test::text(got));
}

// Awaits next() until nullopt, running `handler` for each connection.
task<> next_loop(server& s, netloop::connection_handler handler) {
    auto conns = s.connections();
    while (auto conn = co_await conns.next()) netloop::spawn(handler(std::move(*conn)));
}

}  // namespace

TEST_CASE(
    "any number of tasks may await next() on a TLS or PROXY listener: idle, they use no CPU; "
    "each connection goes to exactly one; close() wakes them all with nullopt",
    "[accept][next]") {
    const auto kind = LISTENER_KINDS;
    const std::size_t waiters = GENERATE(2U, 3U);
    CAPTURE(kind, waiters);
    struct outcome {
        std::chrono::nanoseconds idle_period{};
        std::chrono::nanoseconds idle_cpu{};
        std::vector<std::string> sent;
        std::vector<std::string> delivered;
        std::size_t ended_with_nullopt = 0;
        std::size_t failed = 0;
    };
    auto r = run_bounded([&]() -> task<outcome> {
        outcome out;
        auto s = listen_kind(kind);
        auto seen = std::make_shared<waiters_seen>();
        seen->peers.resize(waiters);
        for (std::size_t i = 0; i < waiters; ++i) netloop::spawn(collect(s, seen, i));
        for (int i = 0; i < 10; ++i) co_await netloop::test::yield();
        // While no client connects, the waiters wait: the process's CPU over a fixed idle
        // period stays a small fraction of it (two waiters that cancel each other's wake, in
        // turn, spin at a full core).
        out.idle_period = 500ms;
        auto before = cpu_used();
        co_await netloop::test::sleep_for(out.idle_period);
        out.idle_cpu = cpu_used() - before;
        clients keep;
        const std::uint16_t n = 7;
        for (std::uint16_t i = 0; i < n; ++i) {
            auto from = co_await connect_one(kind, s, static_cast<std::uint16_t>(40000 + i), keep);
            out.sent.push_back(from);
        }
        auto all_delivered = [&] { return seen->total >= n; };
        (void)co_await eventually(all_delivered, 10s);
        s.close();
        auto all_ended = [&] { return seen->ended_with_nullopt + seen->failed == waiters; };
        (void)co_await eventually(all_ended, 10s);
        for (const auto& got : seen->peers) {
            out.delivered.insert(out.delivered.end(), got.begin(), got.end());
        }
        out.ended_with_nullopt = seen->ended_with_nullopt;
        out.failed = seen->failed;
        co_return out;
    });
    CAPTURE(r.idle_cpu.count());
    CHECK(r.idle_cpu * 10 < r.idle_period);
    std::sort(r.sent.begin(), r.sent.end());
    std::sort(r.delivered.begin(), r.delivered.end());
    CHECK(r.delivered == r.sent);
    CHECK(r.ended_with_nullopt == waiters);
    CHECK(r.failed == 0);
}

TEST_CASE(
    "next() throws accept_failed on a non-transient accept error, on a TLS or PROXY listener "
    "too, to every task awaiting it",
    "[accept][next]") {
#if NETLOOP_HAS_TLS
    const auto kind = GENERATE(as<std::string>{}, "plain", "proxy", "tls");
#else
    const auto kind = GENERATE(as<std::string>{}, "plain", "proxy");
#endif
    CAPTURE(kind);
    struct outcome {
        std::vector<errc> kinds;
        std::vector<int> errnos;
    };
    auto r = run_bounded([&]() -> task<outcome> {
        auto s = listen_kind(kind);
        auto out = std::make_shared<outcome>();
        auto waiting = std::make_shared<int>(0);
        for (int i = 0; i < 2; ++i) {
            netloop::spawn(
                [](server& srv, std::shared_ptr<outcome> o, std::shared_ptr<int> w) -> task<> {
                    auto conns = srv.connections();
                    ++*w;
                    try {
                        auto conn = co_await conns.next();
                        o->kinds.push_back(errc{});
                        o->errnos.push_back(conn ? -1 : 0);
                    } catch (const netloop::error& e) {
                        o->kinds.push_back(e.kind());
                        o->errnos.push_back(e.sys_errno());
                    }
                }(s, out, waiting));
        }
        auto both_waiting = [&] { return *waiting == 2; };
        (void)co_await eventually(both_waiting, 5s);
        for (int i = 0; i < 10; ++i) co_await netloop::test::yield();
        // Linux takes a listening socket out of LISTEN on shutdown(SHUT_RD): the pending accept
        // wakes, and accept() fails with EINVAL, an error that retrying cannot cure.
        ::shutdown(s.native_handle(), SHUT_RD);
        auto both_ended = [&] { return out->kinds.size() == 2; };
        (void)co_await eventually(both_ended, 10s);
        s.close();
        co_return *out;
    });
    CHECK(r.kinds == std::vector<errc>{errc::accept_failed, errc::accept_failed});
    CHECK(r.errnos == std::vector<int>{EINVAL, EINVAL});
}

TEST_CASE(
    "max_preparing bounds the connections in preparation, under next() and serve() alike; at "
    "the bound accepting pauses until a preparation ends",
    "[accept][max_preparing]") {
    const auto how = GENERATE(as<std::string>{}, "next", "serve");
    CAPTURE(how);
    constexpr std::size_t k = 3;
    constexpr int m = 2;
    struct outcome {
        std::vector<std::string> steps;
        std::vector<std::string> served;
    };
    auto r = run_bounded([&]() -> task<outcome> {
        outcome out;
        auto s = server::listen(address::parse("127.0.0.1:0"),
                                listen_options{.proxy_protocol = proxy_protocol::v2,
                                               .proxy_header_timeout = 60s,
                                               .max_preparing = k});
        auto served = std::make_shared<std::vector<std::string>>();
        netloop::connection_handler record = [served](netloop::connection c) {
            return record_into(served, std::move(c));
        };
        netloop::test::serve_outcome serving;
        if (how == "serve") {
            netloop::spawn(netloop::test::serve_into(s, record, {}, serving));
        } else {
            netloop::spawn(next_loop(s, record));
        }
        auto snapshot = [&] {
            return "accepted " + std::to_string(s.stats().accepted) + ", queued " +
                   std::to_string(accept_queue(s));
        };
        // k silent clients take every place.
        std::vector<asio::ip::tcp::socket> silent;
        for (std::size_t i = 0; i < k; ++i) {
            silent.push_back(co_await netloop::test::raw_connect(s.local_address(), 5s));
        }
        auto k_accepted = [&] { return s.stats().accepted >= k; };
        (void)co_await eventually(k_accepted, 10s);
        // m more clients, silent for now: connected (the kernel holds them), not accepted.
        std::vector<asio::ip::tcp::socket> later;
        for (int i = 0; i < m; ++i) {
            later.push_back(co_await netloop::test::raw_connect(s.local_address(), 5s));
        }
        auto settled = [&] { return accept_queue(s) == m || s.stats().accepted > k; };
        (void)co_await eventually(settled, 10s);
        for (int i = 0; i < 20; ++i) co_await netloop::test::yield();
        out.steps.push_back(snapshot());
        // One silent client leaves: its header read ends (EOF), and one more is accepted.
        silent.back().close();
        silent.pop_back();
        auto one_more = [&] { return s.stats().accepted >= k + 1; };
        (void)co_await eventually(one_more, 10s);
        for (int i = 0; i < 20; ++i) co_await netloop::test::yield();
        out.steps.push_back(snapshot());
        // The rest send their header and a byte, the first ones leave: all are served.
        for (int i = 0; i < m; ++i) {
            auto sent = v2("192.0.2.7", static_cast<std::uint16_t>(50000 + i));
            sent.push_back(std::byte{'x'});
            (void)co_await netloop::test::raw_write(later[static_cast<std::size_t>(i)], sent, 5s);
        }
        for (auto& c : silent) c.close();
        auto all_served = [&] { return served->size() == static_cast<std::size_t>(m); };
        (void)co_await eventually(all_served, 10s);
        out.steps.push_back(snapshot());
        out.served = *served;
        s.close();
        auto serve_ended = [&] { return how != "serve" || serving.done; };
        (void)co_await eventually(serve_ended, 10s);
        co_return out;
    });
    CHECK(r.steps == std::vector<std::string>{"accepted 3, queued 2", "accepted 4, queued 1",
                                              "accepted 5, queued 0"});
    std::sort(r.served.begin(), r.served.end());
    CHECK(r.served == std::vector<std::string>{"192.0.2.7:50000 x", "192.0.2.7:50001 x"});
}

TEST_CASE("listen() refuses max_preparing = 0 with invalid_argument", "[accept][max_preparing]") {
    try {
        (void)server::listen(address::parse("127.0.0.1:0"), listen_options{.max_preparing = 0});
        FAIL("listen accepted max_preparing = 0");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == errc::invalid_argument);
    }
}

TEST_CASE(
    "a connection refused by a limit closes at once, with no linger: its fd is gone when the "
    "refusal is counted, and the client reads EOF",
    "[accept][serve][limits]") {
    const auto limit = GENERATE(as<std::string>{}, "max_connections", "per_ip_behind_proxy");
    CAPTURE(limit);
    struct outcome {
        int fds_before = 0;
        int fds_after = 0;
        std::uint64_t rejected = 0;
        std::string refused_client_reads;
    };
    auto r = run_bounded([&]() -> task<outcome> {
        outcome out;
        const bool proxied = limit == "per_ip_behind_proxy";
        auto s = server::listen(
            address::parse("127.0.0.1:0"),
            listen_options{.proxy_protocol = proxied ? proxy_protocol::v2 : proxy_protocol::off});
        // A linger far longer than the test: a pass cannot come from it.
        serve_options options{.linger_timeout = 60s};
        if (proxied) {
            options.max_connections_per_ip = 1;
        } else {
            options.max_connections = 1;
            options.on_limit = netloop::limit_policy::reject;
        }
        netloop::connection_handler hold = [](netloop::connection c) {
            return netloop::test::echo_until_closed(std::move(c));
        };
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, hold, options, serving));
        auto first = co_await netloop::test::raw_connect(s.local_address(), 5s);
        bytes hello = proxied ? v2("192.0.2.30", 1) : bytes{};
        hello.push_back(std::byte{'a'});
        (void)co_await netloop::test::raw_write(first, hello, 5s);
        bytes one(1);
        (void)co_await netloop::test::raw_read(first, one, 5s);
        // A second client is refused; it never reads (until the end) or closes.
        // Behind a header, it sends one with a byte after it (which the close must not turn
        // into a reset); without, it sends nothing (the refusal may come before anything).
        out.fds_before = open_fds();
        auto second = co_await netloop::test::raw_connect(s.local_address(), 5s);
        if (proxied) {
            auto again = v2("192.0.2.30", 2);
            again.push_back(std::byte{'b'});
            (void)co_await netloop::test::raw_write(second, again, 5s);
        }
        auto counted = [&] { return s.stats().rejected >= 1; };
        (void)co_await eventually(counted, 10s);
        out.fds_after = open_fds();
        out.rejected = s.stats().rejected;
        bytes rest;
        auto ec = co_await netloop::test::raw_read_to_end(second, rest, 10s);
        out.refused_client_reads = ec == asio::error::eof && rest.empty() ? "EOF" : ec.message();
        first.close();
        s.close();
        auto ended = [&] { return serving.done; };
        (void)co_await eventually(ended, 10s);
        co_return out;
    });
    CHECK(r.rejected == 1);
    CHECK(r.fds_after == r.fds_before + 1);  // the refused client's own socket, here
    CHECK(r.refused_client_reads == "EOF");
}

TEST_CASE(
    "cancelling one of the tasks awaiting next() on a PROXY listener ends only its wait; once "
    "nobody waits, no accept is pending",
    "[accept][next][cancel]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        std::vector<std::string> out;
        auto s = listen_kind("proxy");
        auto conns = s.connections();
        asio::cancellation_signal cancel;
        std::optional<std::string> cancelled_got;
        asio::co_spawn(
            netloop::loop::shared().context(),
            [&]() -> task<> {
                auto c = co_await conns.next();
                cancelled_got = c ? c->remote_address().to_string() : "nullopt";
            },
            asio::bind_cancellation_slot(cancel.slot(), asio::detached));
        std::optional<std::string> other_got;
        netloop::spawn([](server& srv, std::optional<std::string>& got) -> task<> {
            auto stream = srv.connections();
            auto c = co_await stream.next();
            got = c ? c->remote_address().to_string() : "nullopt";
        }(s, other_got));
        for (int i = 0; i < 10; ++i) co_await netloop::test::yield();
        cancel.emit(asio::cancellation_type::terminal);
        auto cancelled_ended = [&] { return cancelled_got.has_value(); };
        (void)co_await eventually(cancelled_ended, 5s);
        out.push_back("cancelled: " + cancelled_got.value_or("still waiting"));
        clients keep;
        (void)co_await connect_one("proxy", s, 1, keep);
        auto other_ended = [&] { return other_got.has_value(); };
        (void)co_await eventually(other_ended, 5s);
        out.push_back("other: " + other_got.value_or("still waiting"));
        // Nobody waits now: a client stays in the kernel's queue.
        (void)co_await connect_one("proxy", s, 2, keep);
        auto settled = [&] { return accept_queue(s) == 1 || s.stats().accepted > 1; };
        (void)co_await eventually(settled, 5s);
        for (int i = 0; i < 20; ++i) co_await netloop::test::yield();
        out.push_back("accepted " + std::to_string(s.stats().accepted) + ", queued " +
                      std::to_string(accept_queue(s)));
        auto late = co_await conns.next();
        out.push_back("next: " + (late ? late->remote_address().to_string() : "nullopt"));
        s.close();
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"cancelled: nullopt", "other: 192.0.2.1:1",
                                        "accepted 1, queued 1", "next: 192.0.2.1:2"});
}

TEST_CASE(
    "a connection prepared after the last waiter left is kept for the next next(), and closed "
    "when the server closes",
    "[accept][next]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        std::vector<std::string> out;
        auto s = listen_kind("proxy");
        auto conns = s.connections();
        std::size_t header_bytes = 0;
        std::vector<asio::ip::tcp::socket> clients;
        for (std::uint16_t port = 1; port <= 2; ++port) {
            // A waiter, a client accepted for it (silent), then the waiter leaves.
            asio::cancellation_signal cancel;
            bool ended = false;
            asio::co_spawn(
                netloop::loop::shared().context(),
                [&]() -> task<> {
                    auto c = co_await conns.next();
                    ended = true;
                },
                asio::bind_cancellation_slot(cancel.slot(), asio::detached));
            clients.push_back(co_await netloop::test::raw_connect(s.local_address(), 5s));
            auto accepted = [&] { return s.stats().accepted == port; };
            (void)co_await eventually(accepted, 5s);
            cancel.emit(asio::cancellation_type::terminal);
            auto left = [&] { return ended; };
            (void)co_await eventually(left, 5s);
            // Its header comes now, with nobody waiting.
            auto header = v1("192.0.2.1", port);
            header_bytes += header.size();
            (void)co_await netloop::test::raw_write(clients.back(), header, 5s);
            auto read = [&] { return s.stats().bytes_read == header_bytes; };
            (void)co_await eventually(read, 5s);
            if (port == 1) {
                auto kept = co_await conns.next();
                out.push_back(kept ? kept->remote_address().to_string() : "nullopt");
            }
        }
        // The second is left unclaimed: close() closes it.
        s.close();
        bytes rest;
        auto ec = co_await netloop::test::raw_read_to_end(clients.back(), rest, 5s);
        out.push_back(ec == asio::error::eof && rest.empty() ? "closed" : ec.message());
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"192.0.2.1:1", "closed"});
}

TEST_CASE(
    "serve() throws accept_failed on an accept failure that cannot pass, after draining what it "
    "serves, on a plain, TLS or PROXY listener",
    "[accept][serve]") {
#if NETLOOP_HAS_TLS
    const auto kind = GENERATE(as<std::string>{}, "plain", "proxy", "tls");
#else
    const auto kind = GENERATE(as<std::string>{}, "plain", "proxy");
#endif
    CAPTURE(kind);
    struct outcome {
        bool done = false;
        errc kind{};
        int sys = 0;
    };
    auto r = run_bounded([&]() -> task<outcome> {
        auto s = listen_kind(kind);
        auto out = std::make_shared<outcome>();
        netloop::spawn([](server& srv, std::shared_ptr<outcome> o) -> task<> {
            try {
                co_await srv.serve([](netloop::connection) -> task<> { co_return; });
            } catch (const netloop::error& e) {
                o->kind = e.kind();
                o->sys = e.sys_errno();
            }
            o->done = true;
        }(s, out));
        for (int i = 0; i < 10; ++i) co_await netloop::test::yield();
        // Out of LISTEN: the pending accept fails with EINVAL, which retrying cannot cure.
        ::shutdown(s.native_handle(), SHUT_RD);
        (void)co_await eventually([&] { return out->done; }, 10s);
        s.close();
        co_return *out;
    });
    CHECK(r.done);
    CHECK(r.kind == errc::accept_failed);
    CHECK(r.sys == EINVAL);
}
