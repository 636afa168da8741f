// SPDX-License-Identifier: MIT
// Tutorial step 5: graceful shutdown; a signal closes the server and the accept loop ends.
#include <array>
#include <csignal>
#include <cstdio>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 4096> buf;
    for (;;) {
        auto n = co_await conn.read(buf, 30s);
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

// Waits for SIGINT or SIGTERM, then stops accepting: the pending next() yields nullopt.
netloop::task<> close_on_signal(netloop::server& server) {
    netloop::signal_stream signals({SIGINT, SIGTERM});
    int signo = co_await signals.next();
    std::fprintf(stderr, "signal %d: no new connections\n", signo);
    server.close();
}

int main() {
    // We watch the signals ourselves, so run() must leave them alone.
    netloop::run_options options{.cancel_on_signal = false};
    return netloop::run(
        []() -> netloop::task<> {
            auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
            netloop::announce(server);
            netloop::spawn(close_on_signal(server));
            auto conns = server.connections();
            while (auto conn = co_await conns.next()) netloop::spawn(echo(std::move(*conn)));
            // Returning cancels the echo tasks still running; their connections close
            // gracefully, so what they wrote is not lost.
        },
        options);
}
