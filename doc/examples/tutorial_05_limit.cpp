// SPDX-License-Identifier: MIT
// Tutorial step 6: at most 100 clients at once; the 101st is closed as soon as it is accepted.
#include <array>
#include <cstddef>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

constexpr std::size_t max_clients = 100;
std::size_t clients = 0;  // touched only by the loop's thread: no lock, no atomic

netloop::task<> echo(netloop::connection conn) {
    struct seat {
        ~seat() { --clients; }  // however the task ends
    } taken;
    std::array<std::byte, 4096> buf;
    for (;;) {
        auto n = co_await conn.read(buf, 30s);
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        netloop::announce(server);
        auto conns = server.connections();
        while (auto conn = co_await conns.next()) {
            if (clients == max_clients) continue;  // `conn` closes here: the client reads EOF
            ++clients;
            netloop::spawn(echo(std::move(*conn)));
        }
    });
}
