// SPDX-License-Identifier: MIT
// Tutorial step 2: a task per connection, each running the read/write loop.
#include <array>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

// One client's whole life. It ends when read() throws: errc::connection_closed once the client
// closes its side; spawn() logs that at debug level and the connection closes gracefully.
netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 4096> buf;
    for (;;) {
        auto n = co_await conn.read(buf, 30s);
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

int main(int argc, char** argv) {
    return netloop::run([&]() -> netloop::task<> {
        auto at = netloop::address::parse(argc > 1 ? argv[1] : "127.0.0.1:7000");
        auto server = netloop::server::listen(at);
        netloop::announce(server);  // prints "listening on 127.0.0.1:7000"

        auto conns = server.connections();
        while (auto conn = co_await conns.next()) {
            netloop::spawn(echo(std::move(*conn)));  // returns at once; the task runs on
        }
    });
}
