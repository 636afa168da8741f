// SPDX-License-Identifier: MIT
// Tutorial step 7: the same server on serve(): limit, idle timeout and drain are options.
#include <array>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 4096> buf;
    try {
        for (;;) {
            auto n = co_await conn.read(buf, netloop::no_timeout);  // idle_timeout bounds silence
            co_await conn.write(std::span(buf).first(n), 30s);
        }
    } catch (const netloop::error& e) {
        // An idle client cut by idle_timeout (or a 30 s write): its normal end, not an error.
        // Anything else escapes, and serve() logs it with the client's address.
        if (e.kind() != netloop::errc::timeout) throw;
    }
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        netloop::announce(server);
        netloop::serve_options options{
            .max_connections = 100,  // the 101st waits in the kernel's backlog
            .idle_timeout = 60s,     // no byte either way for a minute: closed
            .drain_timeout = 10s,    // on SIGINT/SIGTERM: ten seconds to finish
        };
        co_await server.serve(echo, options);
    });
}
