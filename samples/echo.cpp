#include <netloop/netloop.hpp>
using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 4096> buf;
    for (;;) {                                   // ends by errc::connection_closed
        auto n = co_await conn.read(buf, 30s);   // per-call timeout
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

int main(int argc, char** argv) {
    return netloop::run([&]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse(argc > 1 ? argv[1] : "0.0.0.0:8080"));
        netloop::announce(server);               // "listening on 127.0.0.1:40123", flushed
        auto conns = server.connections();
        while (auto conn = co_await conns.next())
            netloop::spawn(echo(std::move(*conn)));
    });
}
