// SPDX-License-Identifier: MIT
// connection: byte-exact echo, EOF and reset, per-call timeouts, partial writes, cancellation,
// full duplex, connect().
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <string>
#include <sys/socket.h>

#include <asio/detached.hpp>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/serve_helpers.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::task;
using netloop::test::connect_and_accept;
using netloop::test::connect_to;
using netloop::test::listen_on;
using netloop::test::make_pair_over;
using netloop::test::pattern;
using netloop::test::read_n;
using netloop::test::run_bounded;

namespace {

// Awaits `op` and returns the errc of the netloop::error it throws (errc{} if none).
template <typename T>
task<errc> kind_of(task<T> op) {
    try {
        (void)co_await std::move(op);
    } catch (const netloop::error& e) {
        co_return e.kind();
    }
    co_return errc{};
}

task<> write_times(netloop::connection& c, std::span<const std::byte> data, int times) {
    for (int i = 0; i < times; ++i) co_await c.write(data, 5s);
}

std::string text(const std::vector<std::byte>& b) {
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

TEST_CASE(
    "echo round-trips are byte-exact for 1 B, 64 KiB and 8 MiB over every transport, TCP on "
    "IPv4 and IPv6",
    "[connection]") {
    auto transport = NETLOOP_TRANSPORTS_AND_TCP6;
    auto size = GENERATE(std::size_t{1}, std::size_t{64} << 10, std::size_t{8} << 20);
    CAPTURE(transport, size);
    auto sent = pattern(size, 3);
    auto received = run_bounded([&]() -> task<std::vector<std::byte>> {
        auto [accepted, client] = co_await make_pair_over(transport);
        netloop::spawn(netloop::test::echo_until_closed(std::move(accepted)));
        // Write from another task so neither side waits on a full buffer.
        netloop::spawn([](netloop::connection& c, std::span<const std::byte> b) -> task<> {
            co_await c.write(b, 10s);
        }(client, sent));
        co_return co_await read_n(client, size);
    });
    CHECK(received == sent);
}

TEST_CASE("200 concurrent connections each echo 100 messages correctly", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    constexpr int clients = 200;
    constexpr int messages = 100;
    auto [correct, failure] = run_bounded(
        [&]() -> task<std::pair<int, std::string>> {
            // More clients than the default backlog (128) holds: over a Unix socket the kernel
            // answers EAGAIN to a connect beyond it, which connect() retries as TCP retries SYN.
            auto s = listen_on(transport);
            netloop::spawn([](netloop::connection_stream conns) -> task<> {
                while (auto c = co_await conns.next()) {
                    netloop::spawn(netloop::test::echo_until_closed(std::move(*c)));
                }
            }(s.connections()));
            int ok = 0;
            int finished = 0;
            std::string failure;  // the first client's exception, if any
            for (int i = 0; i < clients; ++i) {
                netloop::spawn([](std::string transport, const netloop::server& s, unsigned id,
                                  int& ok, int& finished, std::string& failure) -> task<> {
                    try {
                        auto c = co_await connect_to(transport, s);
                        bool all = true;
                        for (int m = 0; m < messages; ++m) {
                            auto msg = pattern(100 + (id + m) % 200, id * 131 + m);
                            co_await c.write(msg, 5s);
                            auto back = co_await read_n(c, msg.size());
                            all = all && back == msg;
                        }
                        ok += all ? 1 : 0;
                    } catch (const std::exception& e) {
                        if (failure.empty()) failure = e.what();
                    }
                    ++finished;
                }(transport, s, static_cast<unsigned>(i), ok, finished, failure));
            }
            while (finished < clients) co_await netloop::test::sleep_for(10ms);
            co_return std::pair<int, std::string>{ok, failure};
        },
        60s);
    CHECK(failure == "");  // the expansion shows the first client's error
    CHECK(correct == clients);
}

TEST_CASE("a peer that closes gives connection_closed; one that resets gives connection_reset",
          "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [closed, reset, other_ok] = run_bounded([&]() -> task<std::tuple<errc, errc, bool>> {
        auto s = listen_on(transport);
        auto conns = s.connections();
        auto [a, a_client] = co_await connect_and_accept(transport, s, conns);
        auto [b, b_client] = co_await connect_and_accept(transport, s, conns);
        auto [c, c_client] = co_await connect_and_accept(transport, s, conns);

        a_client.close();
        std::array<std::byte, 64> buf;
        auto closed = co_await kind_of(a.read(buf, 5s));

        // The client goes with input it has not read: over TCP abort() sends RST (SO_LINGER 0)
        // in any case; a Unix socket has no RST and ignores SO_LINGER, and unread input at
        // close is what makes the kernel report ECONNRESET to its peer.
        co_await b.write(std::string_view("unread"), 5s);
        b_client.abort();
        auto reset = co_await kind_of(b.read(buf, 5s));

        // The server and the third connection are unaffected.
        co_await c_client.write(std::string_view("still here"), 5s);
        auto got = co_await read_n(c, 10);
        auto d = co_await connect_and_accept(transport, s, conns);
        co_return std::tuple<errc, errc, bool>{
            closed, reset, d.server_side.is_open() && text(got) == "still here"};
    });
    CHECK(closed == errc::connection_closed);
    CHECK(reset == errc::connection_reset);
    CHECK(other_ok);
}

TEST_CASE("read_some() returns the bytes, then 0 at the peer's orderly EOF; a reset still throws",
          "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [got, at_eof, reset] =
        run_bounded([&]() -> task<std::tuple<std::string, std::size_t, errc>> {
            auto s = listen_on(transport);
            auto conns = s.connections();
            auto [a, a_client] = co_await connect_and_accept(transport, s, conns);
            auto [b, b_client] = co_await connect_and_accept(transport, s, conns);

            co_await a_client.write(std::string_view("last words"), 5s);
            a_client.close();
            std::array<std::byte, 64> buf;
            std::string got;
            std::size_t n = 0;
            while ((n = co_await a.read_some(buf, 5s)) != 0) {
                got.append(reinterpret_cast<const char*>(buf.data()), n);
            }
            // As in the test above: unread input at close makes the kernel report a reset.
            co_await b.write(std::string_view("unread"), 5s);
            b_client.abort();
            auto reset = co_await kind_of(b.read_some(buf, 5s));
            co_return std::tuple<std::string, std::size_t, errc>{got, n, reset};
        });
    CHECK(got == "last words");
    CHECK(at_eof == 0);
    CHECK(reset == errc::connection_reset);
}

TEST_CASE("read() times out on a silent peer and the connection stays usable", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [first, bytes] = run_bounded([&]() -> task<std::pair<errc, std::string>> {
        auto [srv, client] = co_await make_pair_over(transport);
        std::array<std::byte, 64> buf;
        auto first = co_await kind_of(srv.read(buf, 50ms));
        co_await client.write(std::string_view("late bytes"), 5s);
        auto got = co_await read_n(srv, 10);
        co_return std::pair<errc, std::string>{first, text(got)};
    });
    CHECK(first == errc::timeout);
    CHECK(bytes == "late bytes");
}

TEST_CASE("EOF while a long timeout is pending is reported at once as connection_closed",
          "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    // A 1 h timeout: if EOF waited for the timer, the watchdog would fail the test.
    auto kind = run_bounded(
        [&]() -> task<errc> {
            auto [srv, client] = co_await make_pair_over(transport);
            netloop::spawn([](netloop::connection c) -> task<> {
                co_await netloop::test::yield();
                c.close();
            }(std::move(client)));
            std::array<std::byte, 64> buf;
            co_return co_await kind_of(srv.read(buf, 1h));
        },
        10s);
    CHECK(kind == errc::connection_closed);
}

TEST_CASE("a write that times out reports bytes_written and can be resumed", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    static constexpr std::size_t total = std::size_t{64} << 20;
    auto data = pattern(total, 11);
    auto [kind, written, received_ok] =
        run_bounded([&]() -> task<std::tuple<errc, std::size_t, bool>> {
            auto [srv, client] = co_await make_pair_over(transport);
            std::size_t written = 0;
            errc kind{};
            try {
                co_await srv.write(data, 200ms);  // the peer does not read yet
                written = total;
            } catch (const netloop::error& e) {
                kind = e.kind();
                written = e.bytes_written();
            }
            // Over TLS a timed-out write may have sent half a record, so it ends the
            // connection instead (connection::write documents it): there is nothing to resume.
            if (transport == "tls") {
                co_return std::tuple<errc, std::size_t, bool>{kind, written, !srv.is_open()};
            }
            // Now the peer reads everything while the writer resumes where it stopped.
            std::vector<std::byte> received;
            bool reader_done = false;
            netloop::spawn(
                [](netloop::connection& c, std::vector<std::byte>& out, bool& done) -> task<> {
                    out = co_await read_n(c, total, 20s);
                    done = true;
                }(client, received, reader_done));
            co_await srv.write(std::span<const std::byte>(data).subspan(written), 20s);
            while (!reader_done) co_await netloop::test::sleep_for(5ms);
            co_return std::tuple<errc, std::size_t, bool>{kind, written, received == data};
        });
    CHECK(kind == errc::timeout);
    CHECK(written > 0);
    CHECK(written < total);
    CHECK(received_ok);
}

TEST_CASE("a cancelled read() leaves nothing pending: the next read() gets the bytes",
          "[connection][cancel]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [cancelled_kind, bytes] = run_bounded([&]() -> task<std::pair<errc, std::string>> {
        auto pair = co_await make_pair_over(transport);
        auto& srv = pair.server_side;
        auto& client = pair.client_side;
        asio::cancellation_signal cancel;
        std::optional<errc> first;
        bool started = false;
        asio::co_spawn(
            netloop::loop::shared().context(),
            [&]() -> task<> {
                std::array<std::byte, 64> buf;
                started = true;
                first = co_await kind_of(srv.read(buf, 10s));
            },
            asio::bind_cancellation_slot(cancel.slot(), asio::detached));
        while (!started) co_await netloop::test::yield();
        cancel.emit(asio::cancellation_type::terminal);
        while (!first) co_await netloop::test::yield();
        co_await client.write(std::string_view("after cancel"), 5s);
        auto got = co_await read_n(srv, 12);
        co_return std::pair<errc, std::string>{*first, text(got)};
    });
    CHECK(cancelled_kind == errc::cancelled);
    CHECK(bytes == "after cancel");
}

TEST_CASE("full duplex: 16 MiB each way at once, byte-exact", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    constexpr std::size_t size = std::size_t{16} << 20;
    auto up = pattern(size, 1);
    auto down = pattern(size, 2);
    auto [server_got, client_got] = run_bounded([&]() -> task<std::pair<bool, bool>> {
        auto [srv, client] = co_await make_pair_over(transport);
        int done = 0;
        bool server_ok = false;
        bool client_ok = false;
        // On each end one task writes while another reads the same connection.
        auto writer = [](netloop::connection& c, std::span<const std::byte> b,
                         int& done) -> task<> {
            co_await c.write(b, 20s);
            ++done;
        };
        auto reader = [](netloop::connection& c, std::span<const std::byte> expect, bool& ok,
                         int& done) -> task<> {
            auto got = co_await read_n(c, expect.size(), 20s);
            ok = std::equal(got.begin(), got.end(), expect.begin(), expect.end());
            ++done;
        };
        netloop::spawn(writer(client, up, done));
        netloop::spawn(writer(srv, down, done));
        netloop::spawn(reader(srv, up, server_ok, done));
        netloop::spawn(reader(client, down, client_ok, done));
        while (done < 4) co_await netloop::test::sleep_for(5ms);
        co_return std::pair<bool, bool>{server_ok, client_ok};
    });
    CHECK(server_got);
    CHECK(client_got);
}

TEST_CASE(
    "connect() to a closed listener fails with connect_failed: ECONNREFUSED, or ENOENT once a "
    "socket file is gone",
    "[connection][connect]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto [kind, sys, at] = run_bounded([&]() -> task<std::tuple<errc, int, address>> {
        auto s = listen_on(transport);
        s.close();
        try {
            auto c = co_await connect_to(transport, s);
        } catch (const netloop::error& e) {
            co_return std::tuple<errc, int, address>{e.kind(), e.sys_errno(), s.local_address()};
        }
        co_return std::tuple<errc, int, address>{errc{}, 0, s.local_address()};
    });
    CAPTURE(at.to_string(), sys);
    CHECK(netloop::test::is_refused(kind, sys, at));
}

TEST_CASE("connect() reaches a server on [::1]", "[connection][connect]") {
    auto remote = run_bounded([]() -> task<address> {
        auto s = netloop::server::listen(address::parse("[::1]:0"));
        auto c = co_await netloop::connect(s.local_address(), 5s);
        co_return c.remote_address();
    });
    CHECK(remote.to_string().rfind("[::1]:", 0) == 0);
}

TEST_CASE("writing to a reset peer gives connection_reset, never SIGPIPE", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto kind = run_bounded([&]() -> task<errc> {
        auto [srv, client] = co_await make_pair_over(transport);
        client.abort();
        auto big = pattern(std::size_t{4} << 20);
        co_return co_await kind_of(write_times(srv, big, 8));
    });
    CHECK(kind == errc::connection_reset);
}

TEST_CASE("read(max_bytes) returns an owning buffer of what arrived", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto got = run_bounded([&]() -> task<std::vector<std::byte>> {
        auto [srv, client] = co_await make_pair_over(transport);
        co_await client.write(std::string_view("abcdef"), 5s);
        std::vector<std::byte> all;
        while (all.size() < 6) {
            auto part = co_await srv.read(4, 5s);
            REQUIRE(!part.empty());
            REQUIRE(part.size() <= 4);
            all.insert(all.end(), part.begin(), part.end());
        }
        co_return all;
    });
    CHECK(text(got) == "abcdef");
}

TEST_CASE("close() ends a read pending in another task with connection_closed", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto kind = run_bounded([&]() -> task<errc> {
        auto [srv, client] = co_await make_pair_over(transport);
        std::optional<errc> result;
        netloop::spawn([](netloop::connection& c, std::optional<errc>& out) -> task<> {
            std::array<std::byte, 8> buf;
            out = co_await kind_of(c.read(buf, 10s));
        }(srv, result));
        co_await netloop::test::yield();
        srv.close();
        srv.close();  // idempotent
        while (!result) co_await netloop::test::yield();
        co_return *result;
    });
    CHECK(kind == errc::connection_closed);
}

TEST_CASE("shutdown_write() sends EOF after the data already written", "[connection]") {
    auto transport = NETLOOP_TRANSPORTS;
    CAPTURE(transport);
    auto ok = run_bounded([&]() -> task<bool> {
        auto [srv, client] = co_await make_pair_over(transport);
        co_await srv.write(std::string_view("bye"), 5s);
        srv.shutdown_write();
        auto got = co_await read_n(client, 3);
        std::array<std::byte, 8> buf;
        auto after = co_await kind_of(client.read(buf, 5s));
        co_return got.size() == 3 && after == errc::connection_closed;
    });
    CHECK(ok);
}

TEST_CASE("connect(\"localhost:port\") resolves and connects", "[connection][resolve]") {
    auto remote = run_bounded([]() -> task<address> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        auto text = "localhost:" + std::to_string(s.local_port());
        auto c = co_await netloop::connect(std::string_view(text), 5s);
        co_return c.remote_address();
    });
    CHECK(remote.host() == "127.0.0.1");
}

TEST_CASE("names that cannot resolve give resolve_failed, without a query leaving the machine",
          "[connection][resolve]") {
    // An empty name, and a label over 63 bytes, fail before any DNS query is built.
    auto name = GENERATE(as<std::string>{}, "", std::string(64, 'a') + ".invalid");
    CAPTURE(name);
    auto [kind, message] = run_bounded([&]() -> task<std::pair<errc, std::string>> {
        try {
            (void)co_await netloop::resolve(name, 80, 5s);
        } catch (const netloop::error& e) {
            co_return std::pair<errc, std::string>{e.kind(), e.what()};
        }
        co_return std::pair<errc, std::string>{errc{}, ""};
    });
    CHECK(kind == errc::resolve_failed);
    CHECK(message.find("resolve") != std::string::npos);
}

TEST_CASE("socket options are set on the connection's socket", "[connection][options]") {
    auto values = run_bounded([]() -> task<std::vector<int>> {
        auto pair = co_await netloop::test::make_pair();
        auto& c = pair.server_side;
        c.set_no_delay(true);
        c.set_keep_alive(true, 30s, 5s, 3);
        c.set_buffer_sizes(65536, 131072);
        int fd = c.socket().native_handle();
        auto get = [fd](int level, int name) {
            int v = -1;
            socklen_t len = sizeof v;
            ::getsockopt(fd, level, name, &v, &len);
            return v;
        };
        co_return std::vector<int>{get(IPPROTO_TCP, TCP_NODELAY),  get(SOL_SOCKET, SO_KEEPALIVE),
                                   get(IPPROTO_TCP, TCP_KEEPIDLE), get(IPPROTO_TCP, TCP_KEEPINTVL),
                                   get(IPPROTO_TCP, TCP_KEEPCNT),  get(SOL_SOCKET, SO_SNDBUF),
                                   get(SOL_SOCKET, SO_RCVBUF)};
    });
    REQUIRE(values.size() == 7);
    CHECK(values[0] == 1);
    CHECK(values[1] == 1);
    CHECK(values[2] == 30);
    CHECK(values[3] == 5);
    CHECK(values[4] == 3);
    CHECK(values[5] >= 65536);
    CHECK(values[6] >= 131072);
}

TEST_CASE("listen_options.v6_only decides whether [::] takes IPv4 clients",
          "[connection][options]") {
    auto v6_only = GENERATE(true, false);
    CAPTURE(v6_only);
    auto kind = run_bounded([&]() -> task<errc> {
        auto s = netloop::server::listen(address::parse("[::]:0"), {.v6_only = v6_only});
        try {
            auto c = co_await netloop::connect(address::ipv4("127.0.0.1", s.local_port()), 5s);
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return errc{};
    });
    CHECK(kind == (v6_only ? errc::connect_failed : errc{}));
}

namespace {

// What one connect() through a task made from short-lived arguments reached: the echo it got
// back and the port it is connected to.
struct reached {
    std::string echo;
    std::uint16_t port = 0;
    std::uint16_t expected_port = 0;  // the server's
};

task<reached> echo_through(task<netloop::connection> pending) {
    auto c = co_await std::move(pending);
    reached r;
    r.port = c.remote_address().port();
    r.echo = co_await netloop::test::echo_once(c, "still the right peer");
    co_return r;
}

}  // namespace

TEST_CASE(
    "connect() and resolve() keep their own copies of their arguments: the task runs right "
    "after the caller's objects are gone or changed",
    "[connection][connect]") {
    // A task starts when it is awaited, not when it is made: arguments passed by reference
    // would be read after the caller's temporaries are destroyed.
    auto which = GENERATE(
        as<std::string>{}, "address temporary", "address changed", "host_and_port changed"
#if NETLOOP_HAS_TLS
        ,
        "tls address and context temporaries", "tls context changed", "tls host_and_port changed"
#endif
    );
    CAPTURE(which);
    auto r = run_bounded([&]() -> task<reached> {
        netloop::listen_options options;
#if NETLOOP_HAS_TLS
        if (which.starts_with("tls")) options.tls = netloop::test::test_server_tls();
#endif
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"), options);
        netloop::test::serve_outcome out;
        netloop::spawn(netloop::test::serve_into(s, netloop::test::echo_until_closed, {}, out));
        auto where = "127.0.0.1:" + std::to_string(s.local_port());
        std::optional<task<netloop::connection>> pending;
        if (which == "address temporary") {
            pending.emplace(netloop::connect(address::parse(where), 5s));
        } else if (which == "address changed") {
            std::optional<address> to(s.local_address());
            pending.emplace(netloop::connect(*to, 5s));
            to.emplace(address::parse("127.0.0.1:1"));  // the same storage, another address
        } else if (which == "host_and_port changed") {
            std::string text = where;
            pending.emplace(netloop::connect(text, 5s));
            std::fill(text.begin(), text.end(), 'x');
        }
#if NETLOOP_HAS_TLS
        // A context of its own, not a copy of the tests' shared one: the temporary is the
        // last handle, so reading it late reads freed memory.
        auto fresh_client = [] {
            auto c = netloop::tls_context::client();
            c.trust_pem(netloop::test::pki().ca.cert);
            return c;
        };
        if (which == "tls address and context temporaries") {
            pending.emplace(netloop::connect(address::parse(where), fresh_client(), 5s));
        } else if (which == "tls context changed") {
            std::optional<netloop::tls_context> tls(fresh_client());
            pending.emplace(netloop::connect(s.local_address(), *tls, 5s));
            tls.emplace(netloop::tls_context::client());  // trusts the system's CAs, not ours
        } else if (which == "tls host_and_port changed") {
            std::string text = where;
            std::optional<netloop::tls_context> tls(fresh_client());
            pending.emplace(netloop::connect(text, *tls, 5s));
            std::fill(text.begin(), text.end(), 'x');
            tls.emplace(netloop::tls_context::client());
        }
#endif
        reached r;
        try {
            r = co_await echo_through(std::move(*pending));
        } catch (const std::exception& e) {
            r.echo = e.what();
        }
        r.expected_port = s.local_port();
        s.close();
        auto served = [&] { return out.done; };
        (void)co_await netloop::test::eventually(served);
        co_return r;
    });
    CHECK(r.echo == "still the right peer");
    CHECK(r.port == r.expected_port);
}

TEST_CASE(
    "resolve() keeps its own copy of the host name: the task runs right after the caller "
    "changed it",
    "[connection][connect]") {
    auto r = run_bounded([]() -> task<std::string> {
        std::string host = "localhost";
        auto pending = netloop::resolve(host, 4242, 5s);
        std::fill(host.begin(), host.end(), 'x');
        std::string found;
        try {
            auto addresses = co_await std::move(pending);
            for (const auto& a : addresses) found += a.to_string() + " ";
        } catch (const std::exception& e) {
            found = e.what();
        }
        co_return found;
    });
    CAPTURE(r);
    CHECK((r.find("127.0.0.1:4242") != std::string::npos ||
           r.find("[::1]:4242") != std::string::npos));
}
