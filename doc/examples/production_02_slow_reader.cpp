// SPDX-License-Identifier: MIT
// Production: a large reply to a slow reader, resumed after each timeout, with a bound.
#include <string>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

// Writes all of `data`, allowing each second of no progress at most `stalls` times.
netloop::task<bool> send_patiently(netloop::connection& conn, std::string_view data, int stalls) {
    while (!data.empty()) {
        try {
            co_await conn.write(data, 1s);
            co_return true;
        } catch (const netloop::error& e) {
            if (e.kind() != netloop::errc::timeout) throw;
            data.remove_prefix(e.bytes_written());  // what did go out stays out
        }
        if (--stalls == 0) co_return false;
    }
    co_return true;
}

netloop::task<> report(netloop::connection conn) {
    std::string big(8 << 20, 'x');  // 8 MiB: far more than the socket buffers hold
    bool sent = co_await send_patiently(conn, big, 30);
    if (!sent) conn.abort();  // a reader this slow gets a reset, not our memory
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        netloop::announce(server);
        co_await server.serve(report);
    });
}
