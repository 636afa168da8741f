// SPDX-License-Identifier: MIT
// TLS: verification, handshake failures and timeouts that cost one connection, ALPN, contexts.
#include <cstddef>
#include <malloc.h>
#include <optional>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NETLOOP_TEST_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NETLOOP_TEST_SANITIZER_HEAP 1
#endif
#endif
#ifdef NETLOOP_TEST_SANITIZER_HEAP
// The sanitizer runtime's count (sanitizer/allocator_interface.h, which only clang installs).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#endif

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/serve_helpers.hpp"
#include "support/temp_file.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::task;
using netloop::tls_context;
using netloop::test::pki;
using netloop::test::run_bounded;
using netloop::test::test_client_tls;
using netloop::test::test_server_tls;

namespace {

struct failure {
    errc kind{};
    std::string what;
};

// Awaits `op` and returns how it failed ({errc{}, ""} if it did not).
template <typename T>
task<failure> failure_of(task<T> op) {
    try {
        (void)co_await std::move(op);
    } catch (const netloop::error& e) {
        co_return failure{e.kind(), e.what()};
    }
    co_return failure{};
}

netloop::connection_handler echo_handler() {
    return [](netloop::connection c) -> task<> {
        co_await netloop::test::echo_until_closed(std::move(c));
    };
}

tls_context server_with(const netloop::test::pem_pair& pair) {
    return tls_context::server_from_pem(pair.cert, pair.key);
}

// Bytes of heap in use now: glibc's count, or the sanitizer's allocator's under ASan/TSan.
std::size_t heap_in_use() {
#ifdef NETLOOP_TEST_SANITIZER_HEAP
    return __sanitizer_get_current_allocated_bytes();
#else
    auto m = ::mallinfo2();
    return m.uordblks + m.hblkhd;
#endif
}

}  // namespace

TEST_CASE("a client verifies the server's chain and name; the data round-trips over TLS", "[tls]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = test_server_tls()});
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, echo_handler(), {}, serving));
        std::vector<std::string> out;
        // By IP address (the certificate's IP SAN), and by host name through the resolver.
        auto by_ip = co_await netloop::connect(s.local_address(), test_client_tls(), 5s);
        out.push_back(by_ip.is_tls() ? "tls" : "plain");
        out.push_back(co_await netloop::test::echo_once(by_ip, "hello over TLS"));
        auto by_name = co_await netloop::connect("localhost:" + std::to_string(s.local_port()),
                                                 test_client_tls(), 5s);
        out.push_back(co_await netloop::test::echo_once(by_name, "by name"));
        // A name the certificate does not carry is refused.
        auto wrong = co_await failure_of(
            netloop::connect(s.local_address(), test_client_tls(), 5s, "other.example"));
        out.push_back(wrong.kind == errc::tls_failed ? "wrong name refused" : wrong.what);
        by_ip.close();
        by_name.close();
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        out.push_back(std::to_string(s.stats().handshake_failures));
        co_return out;
    });
    CHECK(r ==
          std::vector<std::string>{"tls", "hello over TLS", "by name", "wrong name refused", "1"});
}

TEST_CASE("an expired or self-signed certificate is refused unless verification is turned off",
          "[tls]") {
    auto which = GENERATE(as<std::string>{}, "expired", "self-signed");
    auto r = run_bounded([which]() -> task<std::vector<std::string>> {
        const auto& pair = which == "expired" ? pki().expired : pki().self_signed;
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = server_with(pair)});
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, echo_handler(), {}, serving));
        std::vector<std::string> out;
        auto refused =
            co_await failure_of(netloop::connect(s.local_address(), test_client_tls(), 5s));
        out.push_back(refused.kind == errc::tls_failed ? "refused" : "accepted");
        out.push_back(refused.what.find("certificate verify failed") != std::string::npos
                          ? "says why"
                          : refused.what);
        auto lax = tls_context::client();
        lax.set_verify_peer(false);
        auto c = co_await netloop::connect(s.local_address(), lax, 5s);
        out.push_back(co_await netloop::test::echo_once(c, "unverified but encrypted"));
        c.close();
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"refused", "says why", "unverified but encrypted"});
}

TEST_CASE(
    "a plain-TCP client on a TLS port is dropped after the handshake timeout, one that sends "
    "garbage at once, and TLS clients are served meanwhile",
    "[tls]") {
    struct result {
        errc silent_end{};
        errc garbage_end{};
        std::vector<std::string> echoes;
        std::uint64_t handshake_failures = 0;
        std::uint64_t active_after = 99;
    };
    auto r = run_bounded([]() -> task<result> {
        result out;
        auto s = netloop::server::listen(
            address::parse("127.0.0.1:0"),
            netloop::listen_options{.tls = test_server_tls(), .handshake_timeout = 300ms});
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, echo_handler(), {}, serving));
        // A client that speaks plain TCP and waits for the server to talk first.
        auto silent = co_await netloop::connect(s.local_address(), 5s);
        // One that sends something that is not TLS.
        auto garbage = co_await netloop::connect(s.local_address(), 5s);
        co_await garbage.write(std::string_view("GET / HTTP/1.0\r\n\r\n"), 5s);
        // TLS clients, served while the silent one waits.
        for (int i = 0; i < 5; ++i) {
            auto c = co_await netloop::connect(s.local_address(), test_client_tls(), 5s);
            out.echoes.push_back(
                co_await netloop::test::echo_once(c, "client " + std::to_string(i)));
        }
        std::array<std::byte, 64> buf;
        auto garbage_read = co_await failure_of(garbage.read(buf, 5s));
        out.garbage_end = garbage_read.kind;
        auto silent_read = co_await failure_of(silent.read(buf, 5s));
        out.silent_end = silent_read.kind;
        // The server's side of both ends after the clients have seen them: wait for its count.
        (void)co_await netloop::test::eventually(
            [&] { return s.stats().handshake_failures >= 2 && s.stats().active == 0; });
        out.handshake_failures = s.stats().handshake_failures;
        out.active_after = s.stats().active;
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    // Both are closed by the server: they read EOF (or a reset, if bytes were left unread).
    CHECK((r.silent_end == errc::connection_closed || r.silent_end == errc::connection_reset));
    CHECK((r.garbage_end == errc::connection_closed || r.garbage_end == errc::connection_reset));
    CHECK(r.echoes ==
          std::vector<std::string>{"client 0", "client 1", "client 2", "client 3", "client 4"});
    CHECK(r.handshake_failures == 2);
    CHECK(r.active_after == 0);
}

TEST_CASE("connections().next() hands over only connections whose handshake succeeded", "[tls]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto s = netloop::server::listen(
            address::parse("127.0.0.1:0"),
            netloop::listen_options{.tls = test_server_tls(), .handshake_timeout = 2s});
        std::vector<std::string> out;
        // A plain client that sends garbage first, then a TLS client.
        auto plain = co_await netloop::connect(s.local_address(), 5s);
        co_await plain.write(std::string_view("not a client hello"), 5s);
        std::string client_got;
        netloop::spawn([](address at, std::string& got) -> task<> {
            auto c = co_await netloop::connect(at, test_client_tls(), 5s);
            co_await c.write(std::string_view("ping"), 5s);
            std::string back(4, '\0');
            co_await c.read_exactly(std::as_writable_bytes(std::span(back)), 5s);
            got = back;
        }(s.local_address(), client_got));
        auto conns = s.connections();
        auto accepted = co_await conns.next();
        out.push_back(accepted && accepted->is_tls() ? "tls" : "none");
        std::string got(4, '\0');
        co_await accepted->read_exactly(std::as_writable_bytes(std::span(got)), 5s);
        co_await accepted->write(std::string_view("pong"), 5s);
        out.push_back(got);
        co_await netloop::test::eventually([&] { return !client_got.empty(); });
        out.push_back(client_got);
        out.push_back(std::to_string(s.stats().handshake_failures));
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"tls", "ping", "pong", "1"});
}

TEST_CASE("ALPN: the server picks the first of its protocols that the client offers", "[tls]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        auto server_tls = server_with(pki().leaf);
        server_tls.set_alpn({"h2", "http/1.1"});
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = server_tls});
        std::vector<std::string> out;
        for (auto offer :
             {std::vector<std::string>{"http/1.1", "h2"}, std::vector<std::string>{"http/1.1"},
              std::vector<std::string>{"imap"}}) {
            auto client_tls = tls_context::client();
            client_tls.trust_pem(pki().ca.cert);
            client_tls.set_alpn(offer);
            // The client's handshake needs the server's, which next() runs: side by side.
            std::optional<std::string> client_alpn;
            netloop::spawn(
                [](address at, tls_context tls, std::optional<std::string>& alpn) -> task<> {
                    auto c = co_await netloop::connect(at, tls, 5s);
                    alpn = c.tls_alpn();
                    co_await netloop::test::read_n(c, 1);  // until the server is done
                }(s.local_address(), client_tls, client_alpn));
            auto conns = s.connections();
            auto accepted = co_await conns.next();
            co_await netloop::test::eventually([&] { return client_alpn.has_value(); });
            co_await accepted->write(std::string_view("."), 5s);
            out.push_back(client_alpn.value_or("none") + "/" + accepted->tls_alpn());
        }
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"h2/h2", "http/1.1/http/1.1", "/"});
}

TEST_CASE("tls_context: files, bad input and the wrong side are clear errors", "[tls]") {
    netloop::test::temp_file cert;
    netloop::test::temp_file key;
    netloop::test::temp_file other_key;
    cert.write(pki().leaf.cert);
    key.write(pki().leaf.key);
    other_key.write(pki().self_signed.key);

    CHECK_NOTHROW(tls_context::server(cert.path(), key.path()));
    auto kind_of = [](auto f) {
        try {
            f();
        } catch (const netloop::error& e) {
            return e.kind();
        }
        return errc{};
    };
    CHECK(kind_of([&] { (void)tls_context::server(cert.path(), other_key.path()); }) ==
          errc::tls_failed);
    CHECK(kind_of([&] { (void)tls_context::server(cert.path() + ".missing", key.path()); }) ==
          errc::tls_failed);
    CHECK(kind_of([&] { (void)tls_context::server_from_pem("not PEM", pki().leaf.key); }) ==
          errc::tls_failed);
    CHECK(kind_of([&] { tls_context().set_verify_peer(false); }) == errc::invalid_argument);
    CHECK(kind_of([&] { tls_context::client().set_alpn({""}); }) == errc::invalid_argument);

    auto wrong_side = run_bounded([]() -> task<std::vector<errc>> {
        std::vector<errc> out;
        try {
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                             netloop::listen_options{.tls = test_client_tls()});
            out.push_back(errc{});
        } catch (const netloop::error& e) {
            out.push_back(e.kind());
        }
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        auto r = co_await failure_of(netloop::connect(s.local_address(), test_server_tls(), 5s));
        out.push_back(r.kind);
        co_return out;
    });
    CHECK(wrong_side == std::vector<errc>{errc::invalid_argument, errc::invalid_argument});
}

TEST_CASE(
    "mutual TLS: a server that verifies peers serves a client with a trusted certificate "
    "and refuses one without",
    "[tls]") {
    struct result {
        std::string with_cert;
        bool without_cert_refused = false;
        std::uint64_t handshake_failures = 0;
    };
    auto r = run_bounded([]() -> task<result> {
        result out;
        auto server_tls = server_with(pki().leaf);
        server_tls.trust_pem(pki().ca.cert);
        server_tls.set_verify_peer(true);
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = server_tls});
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, echo_handler(), {}, serving));

        auto with = tls_context::client();
        with.trust_pem(pki().ca.cert);
        with.use_certificate_pem(pki().leaf.cert, pki().leaf.key);
        auto c = co_await netloop::connect(s.local_address(), with, 5s);
        out.with_cert = co_await netloop::test::echo_once(c, "with a certificate");

        // TLS 1.3 lets the client finish its handshake before the server has checked it: the
        // refusal shows in connect() or in the first read.
        auto refused = co_await failure_of([](address at) -> task<std::string> {
            auto c = co_await netloop::connect(at, test_client_tls(), 5s);
            co_return co_await netloop::test::echo_once(c, "without");
        }(s.local_address()));
        out.without_cert_refused = refused.kind == errc::tls_failed ||
                                   refused.kind == errc::connection_closed ||
                                   refused.kind == errc::connection_reset;
        // The server counts the failure when its handshake ends, which may be after the client
        // has seen the alert.
        (void)co_await netloop::test::eventually([&] { return s.stats().handshake_failures > 0; });
        out.handshake_failures = s.stats().handshake_failures;
        c.close();
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r.with_cert == "with a certificate");
    CHECK(r.without_cert_refused);
    CHECK(r.handshake_failures == 1);
}

TEST_CASE(
    "a silent client does not delay the others: next() hands over a TLS client that connected "
    "after it",
    "[tls]") {
    // The silent client connects first and never sends its hello: its handshake may take the
    // whole handshake_timeout (30 s), far longer than the watchdog. The next client must not
    // wait for it.
    struct result {
        std::string echo;
        std::uint64_t failures_meanwhile = 1;
        int accepted = 0;
    };
    auto r = run_bounded(
        []() -> task<result> {
            result r;
            auto s = netloop::server::listen(
                address::parse("127.0.0.1:0"),
                netloop::listen_options{.tls = test_server_tls(), .handshake_timeout = 30s});
            auto conns = s.connections();
            bool accepting_done = false;
            netloop::spawn(
                [](netloop::connection_stream& conns, int& accepted, bool& done) -> task<> {
                    while (auto c = co_await conns.next()) {
                        ++accepted;
                        netloop::spawn(netloop::test::echo_until_closed(std::move(*c)));
                    }
                    done = true;
                }(conns, r.accepted, accepting_done));
            auto silent = co_await netloop::connect(s.local_address(), 5s);  // plain TCP, mute
            co_await netloop::test::yield();  // the accept of the silent client goes first
            try {
                auto c = co_await netloop::connect(s.local_address(), test_client_tls(), 5s);
                r.echo = co_await netloop::test::echo_once(c, "not held up");
            } catch (const std::exception& e) {
                r.echo = e.what();
            }
            r.failures_meanwhile = s.stats().handshake_failures;
            silent.close();  // its handshake fails now, and the stream can end
            s.close();
            auto ended = [&] { return accepting_done; };
            (void)co_await netloop::test::eventually(ended, 5s);
            co_return r;
        },
        10s);
    CHECK(r.echo == "not held up");
    CHECK(r.failures_meanwhile == 0);
    CHECK(r.accepted == 1);
}

TEST_CASE(
    "connect(\"localhost:port\") over TLS ends with timeout when the server accepts and never "
    "answers the handshake: the timeout bounds the lookup, the connects and the handshake together",
    "[tls][connect]") {
    struct result {
        failure f;
        bool accepted = false;
        std::chrono::steady_clock::duration took{};
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        // A plain listener: it takes the connection and never says a word of TLS.
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        std::optional<netloop::connection> held;
        netloop::spawn([](netloop::server& srv, std::optional<netloop::connection>& out,
                          bool& seen) -> task<> {
            auto conns = srv.connections();
            auto c = co_await conns.next();
            if (c) out.emplace(std::move(*c));
            seen = true;
        }(s, held, r.accepted));
        auto target = "localhost:" + std::to_string(s.local_port());
        auto started = std::chrono::steady_clock::now();
        r.f = co_await failure_of(netloop::connect(target, test_client_tls(), 300ms));
        r.took = std::chrono::steady_clock::now() - started;
        s.close();
        (void)co_await netloop::test::eventually([&] { return r.accepted; }, 5s);
        co_return r;
    });
    CAPTURE(r.f.what);
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(r.took).count());
    CHECK(r.accepted);  // the TCP connect succeeded: only the handshake was left to bound
    CHECK(r.f.kind == errc::timeout);
    // Nothing else ends this call (the server holds the connection open for the whole test,
    // whose watchdog is 30 s): a bound far from that, and above the 300 ms timeout.
    CHECK(r.took < 5s);
}

TEST_CASE(
    "an idle TLS connection pair (server and client end) holds under 64 KiB of heap: no BIO "
    "pair and no stream buffers beside OpenSSL's own, which it gives back while idle",
    "[tls]") {
    // Both ends are in this process: each pair is a server connection waiting in a read and a
    // client connection holding its socket, after a handshake and one echo. Measured: 54 KiB a
    // pair, 5 KiB of it the plain connections' own (OpenSSL 3.0's state for one TLS connection
    // is some 24 KiB); 192 KiB with Asio's ssl::stream, netloop's before, which added a BIO pair
    // and two 17 KiB buffers to each end, whatever the connection was doing.
    constexpr std::size_t pairs = 32;
    auto per_pair = run_bounded([]() -> task<std::size_t> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = test_server_tls()});
        netloop::test::serve_outcome serving;
        auto echo_small = [](netloop::connection c) -> task<> {
            try {
                for (;;) {
                    auto bytes = co_await c.read(std::size_t{16}, 30s);
                    co_await c.write(bytes, 5s);
                }
            } catch (const netloop::error& e) {
                if (e.kind() != errc::connection_closed) throw;
            }
        };
        netloop::spawn(netloop::test::serve_into(s, echo_small, {}, serving));
        // Warm: the first connection makes what every later one shares (OpenSSL's tables,
        // Asio's per-thread caches, the session ticket keys).
        std::vector<netloop::connection> clients;
        for (int i = 0; i < 2; ++i) {
            clients.push_back(co_await netloop::connect(s.local_address(), test_client_tls(), 5s));
            (void)co_await netloop::test::echo_once(clients.back(), "warm");
        }
        co_await netloop::test::eventually([&] { return s.stats().active == 2; });
        auto before = heap_in_use();
        for (std::size_t i = 0; i < pairs; ++i) {
            clients.push_back(co_await netloop::connect(s.local_address(), test_client_tls(), 5s));
            (void)co_await netloop::test::echo_once(clients.back(), "idle");
        }
        co_await netloop::test::eventually([&] { return s.stats().active == pairs + 2; });
        auto after = heap_in_use();
        for (auto& c : clients) c.close();
        s.close();
        co_await netloop::test::eventually([&] { return serving.done; });
        co_return after > before ? (after - before) / pairs : 0;
    });
    INFO("heap per idle TLS connection pair: " << per_pair << " bytes");
    CHECK(per_pair > 0);
    CHECK(per_pair < 64 * 1024);
}
