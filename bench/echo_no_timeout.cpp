// SPDX-License-Identifier: MIT
// echo_no_timeout: samples/echo without timeouts (netloop::no_timeout), the framework's bare cost.
#include <array>
#include <cstddef>
#include <span>
#include <string_view>

#include <netloop/netloop.hpp>

netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 4096> buf;
    for (;;) {  // ends by errc::connection_closed
        auto n = co_await conn.read(buf, netloop::no_timeout);
        co_await conn.write(std::span(buf).first(n), netloop::no_timeout);
    }
}

// Usage: NAME [HOST:PORT] [--nodelay]   (--nodelay: TCP_NODELAY on accepted connections)
int main(int argc, char** argv) {
    std::string_view where = "0.0.0.0:8080";
    bool nodelay = false;
    for (int i = 1; i < argc; ++i) {
        if (std::string_view(argv[i]) == "--nodelay")
            nodelay = true;
        else
            where = argv[i];
    }
    return netloop::run([&]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse(where));
        netloop::announce(server);
        auto conns = server.connections();
        while (auto conn = co_await conns.next()) {
            if (nodelay) conn->socket().set_option(asio::ip::tcp::no_delay(true));
            netloop::spawn(echo(std::move(*conn)));
        }
    });
}
