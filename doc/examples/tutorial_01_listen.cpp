// SPDX-License-Identifier: MIT
// Tutorial step 1: listen on one interface, let the kernel pick the port, greet each client.
#include <cstdio>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

int main() {
    return netloop::run([]() -> netloop::task<> {
        // 127.0.0.1: only this machine can connect. Port 0: the kernel picks a free port.
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
        std::printf("try: nc 127.0.0.1 %u\n", unsigned{server.local_port()});
        std::fflush(stdout);

        auto conns = server.connections();
        while (auto conn = co_await conns.next()) {
            co_await conn->write(std::string_view("hello, and goodbye\n"), 5s);
        }  // each `conn` closes at the end of its iteration
    });
}
