// SPDX-License-Identifier: MIT
// TLS as operators run it: a live server's context replaced (from any thread, on every loop),
// certificates chosen by SNI, session resumption.
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/serve_helpers.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::task;
using netloop::tls_context;
using netloop::test::pki;
using netloop::test::run_bounded;
using netloop::test::test_client_tls;

namespace {

// Awaits `op` and returns the errc it throws (errc{} if none).
template <typename T>
task<errc> kind_of(task<T> op) {
    try {
        (void)co_await std::move(op);
    } catch (const netloop::error& e) {
        co_return e.kind();
    }
    co_return errc{};
}

tls_context server_with(const netloop::test::pem_pair& pair) {
    return tls_context::server_from_pem(pair.cert, pair.key);
}

// A client that trusts only `anchor` (a CA, or a self-signed certificate itself): whether its
// handshake succeeds tells which certificate the server presented.
tls_context client_trusting(const std::string& anchor) {
    auto c = tls_context::client();
    c.trust_pem(anchor);
    return c;
}

// Connects with `client`, echoes one message, closes; the echo, or the errc of the failure.
task<std::string> echo_with(address at, tls_context client, std::string msg) {
    try {
        auto c = co_await netloop::connect(at, client, 5s);
        auto back = co_await netloop::test::echo_once(c, msg);
        c.close();
        co_return back;
    } catch (const netloop::error& e) {
        co_return std::string(e.what());
    }
}

netloop::connection_handler echo_handler() {
    return [](netloop::connection c) -> task<> {
        co_await netloop::test::echo_until_closed(std::move(c));
    };
}

}  // namespace

TEST_CASE(
    "set_tls from another thread while handshakes run on two loops: each handshake completes with "
    "one context, established connections keep theirs, and afterwards new clients get the new "
    "certificate",
    "[tls][threads]") {
    struct result {
        int handshakes = 0;
        int failed = 0;
        std::size_t loops = 0;
        int swaps = 0;
        std::string before_reload;
        std::string kept_through_reload;
        std::string new_cert_client;
        errc old_cert_client{};
    };
    auto a = server_with(pki().leaf);         // signed by the test CA
    auto b = server_with(pki().self_signed);  // trusted only by itself
    std::atomic<int> handshakes{0};
    std::atomic<int> swaps{0};
    std::atomic<bool> toggler_done{false};
    std::mutex loops_mutex;
    std::set<std::thread::id> loops;

    auto r = run_bounded(
        [&]() -> task<result> {
            result out;
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                             netloop::listen_options{.tls = a});
            netloop::test::serve_outcome serving;
            auto handler = [&](netloop::connection c) -> task<> {
                {
                    std::lock_guard lock(loops_mutex);
                    loops.insert(std::this_thread::get_id());
                }
                co_await netloop::test::echo_until_closed(std::move(c));
            };
            netloop::spawn(netloop::test::serve_into(s, handler, {.threads = 2}, serving));

            auto ca_only = test_client_tls();
            auto self_only = client_trusting(pki().self_signed.cert);
            auto either = client_trusting(pki().ca.cert);
            either.trust_pem(pki().self_signed.cert);

            auto before = co_await netloop::connect(s.local_address(), ca_only, 5s);
            out.before_reload = co_await netloop::test::echo_once(before, "before");

            // One swap per completed handshake, so that swaps and handshakes interleave; the
            // last swap installs `b`.
            constexpr int swap_count = 24;
            std::thread toggler([&] {
                auto give_up = std::chrono::steady_clock::now() + 20s;
                for (int i = 0; i < swap_count; ++i) {
                    while (handshakes.load() < i && std::chrono::steady_clock::now() < give_up) {
                        std::this_thread::sleep_for(1ms);
                    }
                    s.set_tls(i % 2 == 0 ? b : a);
                    swaps.fetch_add(1);
                }
                s.set_tls(b);
                toggler_done.store(true);
            });
            // Two clients at a time, until the toggler is done.
            auto client = [&](int& failed) -> task<> {
                while (!toggler_done.load()) {
                    auto back = co_await echo_with(s.local_address(), either, "during");
                    if (back != "during") ++failed;
                    handshakes.fetch_add(1);
                }
            };
            int failed_1 = 0;
            int failed_2 = 0;
            bool done_1 = false;
            bool done_2 = false;
            auto run_client = [&](int& failed, bool& done) -> task<> {
                co_await client(failed);
                done = true;
            };
            netloop::spawn(run_client(failed_1, done_1));
            netloop::spawn(run_client(failed_2, done_2));
            (void)co_await netloop::test::eventually([&] { return done_1 && done_2; });
            toggler.join();
            out.handshakes = handshakes.load();
            out.failed = failed_1 + failed_2;
            out.swaps = swaps.load();

            out.kept_through_reload = co_await netloop::test::echo_once(before, "kept");
            out.new_cert_client = co_await echo_with(s.local_address(), self_only, "new");
            out.old_cert_client =
                co_await kind_of(netloop::connect(s.local_address(), ca_only, 5s));
            before.close();
            s.close();
            (void)co_await netloop::test::eventually([&] { return serving.done; });
            std::lock_guard lock(loops_mutex);
            out.loops = loops.size();
            co_return out;
        },
        60s);
    CHECK(r.swaps == 24);
    CHECK(r.handshakes >= 24);
    CHECK(r.failed == 0);
    CHECK(r.loops == 2);
    CHECK(r.before_reload == "before");
    CHECK(r.kept_through_reload == "kept");
    CHECK(r.new_cert_client == "new");
    CHECK(r.old_cert_client == errc::tls_failed);
}

TEST_CASE("set_tls: a server without TLS, an empty or a client context are clear errors", "[tls]") {
    auto r = run_bounded([]() -> task<std::vector<errc>> {
        std::vector<errc> out;
        auto plain = netloop::server::listen(address::parse("127.0.0.1:0"));
        auto tls = netloop::server::listen(address::parse("127.0.0.1:0"),
                                           netloop::listen_options{.tls = server_with(pki().leaf)});
        auto kind = [](auto f) {
            try {
                f();
            } catch (const netloop::error& e) {
                return e.kind();
            }
            return errc{};
        };
        out.push_back(kind([&] { plain.set_tls(server_with(pki().leaf)); }));
        out.push_back(kind([&] { tls.set_tls(tls_context()); }));
        out.push_back(kind([&] { tls.set_tls(tls_context::client()); }));
        out.push_back(kind([&] { tls.set_tls(server_with(pki().self_signed)); }));
        co_return out;
    });
    CHECK(r == std::vector<errc>{errc::invalid_argument, errc::invalid_argument,
                                 errc::invalid_argument, errc{}});
}

TEST_CASE("set_tls switches connections().next() too: the next handshake uses the new context",
          "[tls]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        std::vector<std::string> out;
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = server_with(pki().leaf)});
        auto conns = s.connections();
        bool accepting_done = false;
        netloop::spawn([](netloop::connection_stream& conns, bool& done) -> task<> {
            while (auto c = co_await conns.next()) {
                netloop::spawn(netloop::test::echo_until_closed(std::move(*c)));
            }
            done = true;
        }(conns, accepting_done));
        auto self_only = client_trusting(pki().self_signed.cert);
        out.push_back(co_await echo_with(s.local_address(), test_client_tls(), "old"));
        s.set_tls(server_with(pki().self_signed));
        out.push_back(co_await echo_with(s.local_address(), self_only, "new"));
        s.close();
        (void)co_await netloop::test::eventually([&] { return accepting_done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"old", "new"});
}

TEST_CASE(
    "add_sni: a client asking for the name gets that certificate; a client sending no name gets "
    "the default",
    "[tls]") {
    auto r = run_bounded([]() -> task<std::vector<std::string>> {
        std::vector<std::string> out;
        auto tls = server_with(pki().leaf);  // the default: signed by the test CA
        tls.add_sni_pem("LOCALHOST", pki().self_signed.cert, pki().self_signed.key);
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"),
                                         netloop::listen_options{.tls = tls});
        netloop::test::serve_outcome serving;
        netloop::spawn(netloop::test::serve_into(s, echo_handler(), {}, serving));
        auto self_only = client_trusting(pki().self_signed.cert);
        auto by_name = [&](tls_context client) -> task<std::string> {
            try {
                auto c = co_await netloop::connect("localhost:" + std::to_string(s.local_port()),
                                                   client, 5s);
                co_return co_await netloop::test::echo_once(c, "named");
            } catch (const netloop::error& e) {
                co_return std::string(e.what());
            }
        };
        // By name (SNI "localhost"): the self-signed certificate, which only self_only trusts.
        out.push_back(co_await by_name(self_only));
        out.push_back(co_await by_name(test_client_tls()) == "named" ? "CA trusted" : "refused");
        // By IP address, no SNI: the default.
        out.push_back(co_await echo_with(s.local_address(), test_client_tls(), "default"));
        s.close();
        (void)co_await netloop::test::eventually([&] { return serving.done; });
        co_return out;
    });
    CHECK(r == std::vector<std::string>{"named", "refused", "default"});
}

TEST_CASE("add_sni and session settings: bad names and the client side are clear errors", "[tls]") {
    auto kind = [](auto f) {
        try {
            f();
        } catch (const netloop::error& e) {
            return e.kind();
        }
        return errc{};
    };
    auto server = server_with(pki().leaf);
    auto client = tls_context::client();
    const auto& pair = pki().self_signed;
    CHECK(kind([&] { server.add_sni_pem("a.example.com", pair.cert, pair.key); }) == errc{});
    CHECK(kind([&] { server.add_sni_pem("*.example.com", pair.cert, pair.key); }) == errc{});
    CHECK(kind([&] { server.add_sni_pem("", pair.cert, pair.key); }) == errc::invalid_argument);
    CHECK(kind([&] { server.add_sni_pem("a.*.com", pair.cert, pair.key); }) ==
          errc::invalid_argument);
    CHECK(kind([&] { server.add_sni_pem("*", pair.cert, pair.key); }) == errc::invalid_argument);
    CHECK(kind([&] { server.add_sni_pem("a..com", pair.cert, pair.key); }) ==
          errc::invalid_argument);
    CHECK(kind([&] { server.add_sni_pem("a.example.com", pair.cert, pki().leaf.key); }) ==
          errc::tls_failed);
    CHECK(kind([&] { server.add_sni("a.example.com", "/nonexistent.pem", "/nonexistent.key"); }) ==
          errc::tls_failed);
    CHECK(kind([&] { client.add_sni_pem("a.example.com", pair.cert, pair.key); }) ==
          errc::invalid_argument);
    CHECK(kind([&] { server.set_session_resumption(false); }) == errc{});
    CHECK(kind([&] { server.set_session_ticket_rotation(std::chrono::seconds(0)); }) ==
          errc::invalid_argument);
    CHECK(kind([&] { server.set_session_ticket_rotation(std::chrono::hours(12)); }) == errc{});
    CHECK(kind([&] { server.share_session_tickets(server_with(pair)); }) == errc{});
    CHECK(kind([&] { client.set_session_resumption(true); }) == errc::invalid_argument);
    CHECK(kind([&] { server.share_session_tickets(client); }) == errc::invalid_argument);
}
