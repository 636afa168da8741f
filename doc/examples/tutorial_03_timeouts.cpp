// SPDX-License-Identifier: MIT
// Tutorial step 4: per-call timeouts; after a timeout the connection still works.
#include <array>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 4096> buf;
    int quiet = 0;  // timeouts in a row
    for (;;) {
        std::size_t n = 0;
        try {
            n = co_await conn.read(buf, 10s);
        } catch (const netloop::error& e) {
            if (e.kind() != netloop::errc::timeout) throw;
        }
        if (n == 0) {  // ten seconds without a byte
            if (++quiet == 2) {
                co_await conn.write(std::string_view("bye\n"), 5s);
                co_return;
            }
            co_await conn.write(std::string_view("still there?\n"), 5s);
            continue;
        }
        quiet = 0;
        co_await conn.write(std::span(buf).first(n), 5s);
    }
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        netloop::announce(server);
        auto conns = server.connections();
        while (auto conn = co_await conns.next()) netloop::spawn(echo(std::move(*conn)));
    });
}
