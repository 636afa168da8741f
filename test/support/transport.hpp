// SPDX-License-Identifier: MIT
// The transports the core tests run over with the same test code: a listener, a client, and
// what "refused" looks like on each.
#pragma once

#include <atomic>
#include <cerrno>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <utility>

#include <netloop/netloop.hpp>

#include "catch.hpp"
#include "loopback.hpp"
#if NETLOOP_HAS_TLS
#include "test_certs.hpp"
#endif

namespace netloop::test {

using namespace std::chrono_literals;

// Every transport a parameterised test runs over: TCP on 127.0.0.1, a Unix socket file, a
// Linux abstract Unix socket, and TLS over TCP (certificates made at test time).
#if NETLOOP_HAS_TLS
#define NETLOOP_TRANSPORTS GENERATE(as<std::string>{}, "tcp", "unix", "unix-abstract", "tls")
#else
#define NETLOOP_TRANSPORTS GENERATE(as<std::string>{}, "tcp", "unix", "unix-abstract")
#endif

#if NETLOOP_HAS_TLS

// The server side of the "tls" transport: the test CA's leaf for localhost and 127.0.0.1.
inline const tls_context& test_server_tls() {
    static const tls_context context =
        tls_context::server_from_pem(pki().leaf.cert, pki().leaf.key);
    return context;
}

// The client side of the "tls" transport: verifies against the test CA only.
inline const tls_context& test_client_tls() {
    static const tls_context context = [] {
        auto c = tls_context::client();
        c.trust_pem(pki().ca.cert);
        return c;
    }();
    return context;
}
#endif

// NETLOOP_TRANSPORTS and TCP on [::1] as well, for the tests that keep their IPv6 coverage. A new
// transport goes into both lists.
#if NETLOOP_HAS_TLS
#define NETLOOP_TRANSPORTS_AND_TCP6 \
    GENERATE(as<std::string>{}, "tcp", "tcp6", "unix", "unix-abstract", "tls")
#else
#define NETLOOP_TRANSPORTS_AND_TCP6 \
    GENERATE(as<std::string>{}, "tcp", "tcp6", "unix", "unix-abstract")
#endif

// A fresh address to listen on: port 0, or a Unix name no other test (or test run) uses.
inline address any_address(const std::string& transport) {
    static std::atomic<int> counter{0};
    auto unique = "netloop-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    if (transport == "tcp" || transport == "tls") return address::parse("127.0.0.1:0");
    if (transport == "tcp6") return address::parse("[::1]:0");
    if (transport == "unix") {
        return address::unix_socket((std::filesystem::temp_directory_path() / unique).string() +
                                    ".sock");
    }
    if (transport == "unix-abstract") return address::unix_socket("@" + unique);
    throw std::invalid_argument("unknown transport " + transport);
}

// A server on a fresh address of `transport`.
inline server listen_on(const std::string& transport, listen_options options = {}) {
#if NETLOOP_HAS_TLS
    if (transport == "tls") options.tls = test_server_tls();
#endif
    return server::listen(any_address(transport), options);
}

// A client of `s`, a server of `transport`.
inline task<connection> connect_to(const std::string& transport, const server& s,
                                   duration timeout = 5s) {
#if NETLOOP_HAS_TLS
    if (transport == "tls") return connect(s.local_address(), test_client_tls(), timeout);
#else
    (void)transport;
#endif
    return connect(s.local_address(), timeout);
}

// One client of `s` and its accepted end from `conns`. The connect runs beside the accept:
// a TLS client's connect() returns only after the handshake, whose server half next() runs.
inline task<connected_pair> connect_and_accept(const std::string& transport, const server& s,
                                               connection_stream& conns) {
    struct outcome {
        std::optional<connection> client;
        std::exception_ptr failure;
        bool done = false;
    };
    auto out = std::make_shared<outcome>();
    spawn([](std::string t, const server& srv, std::shared_ptr<outcome> o) -> task<> {
        try {
            o->client.emplace(co_await connect_to(t, srv));
        } catch (...) {
            o->failure = std::current_exception();
        }
        o->done = true;
    }(transport, s, out));
    auto accepted = co_await conns.next();
    // The client finishes within its own 5 s bound.
    asio::steady_timer tick(co_await asio::this_coro::executor);
    while (!out->done) {
        tick.expires_after(1ms);
        co_await tick.async_wait(asio::use_awaitable);
    }
    if (out->failure) std::rethrow_exception(out->failure);
    if (!accepted) throw std::runtime_error("no connection accepted");
    co_return connected_pair{std::move(*accepted), std::move(*out->client)};
}

// A server of `transport`, one client connected to it, and the accepted end.
inline task<connected_pair> make_pair_over(const std::string& transport) {
    auto s = listen_on(transport);
    auto conns = s.connections();
    co_return co_await connect_and_accept(transport, s, conns);
}

// True if a connect that failed with `kind` and `sys_errno` is how a connect to a closed listener
// of `at` fails: ECONNREFUSED, or ENOENT once a Unix socket's file is gone.
inline bool is_refused(errc kind, int sys_errno, const address& at) {
    if (kind != errc::connect_failed) return false;
    return sys_errno == ECONNREFUSED ||
           (at.is_unix() && at.path().front() != '@' && sys_errno == ENOENT);
}

// The same, for a thrown error.
inline bool is_refused(const error& e, const address& at) {
    return is_refused(e.kind(), e.sys_errno(), at);
}

// The same, for a failure as {kind, errno} (what serve_helpers' failure_of() returns).
inline bool is_refused(std::pair<errc, int> failure, const address& at) {
    return is_refused(failure.first, failure.second, at);
}

}  // namespace netloop::test
