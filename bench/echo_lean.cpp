// SPDX-License-Identifier: MIT
// echo_lean: samples/echo on read(max_bytes, timeout), which holds a buffer only while data waits.
//
// An idle connection costs its coroutine frame and socket, not a 4 KiB array: the figure for
// "RSS per idle connection" in bench/RESULTS.md.
#include <cstddef>
#include <string_view>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    for (;;) {  // ends by errc::connection_closed
        auto bytes = co_await conn.read(std::size_t{4096}, 30s);
        co_await conn.write(bytes, 30s);
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
