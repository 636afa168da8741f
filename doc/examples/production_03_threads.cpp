// SPDX-License-Identifier: MIT
// Production: two loops on two threads, and state owned by one loop, updated by posting to it.
#include <array>
#include <cstdint>
#include <cstdio>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

// Lives on the server's loop and is touched only by its thread.
struct tally {
    netloop::loop& home;
    std::uint64_t greeted = 0;
};

netloop::task<> greet(tally& t, netloop::connection conn) {
    // This handler may run on any of the loops: hand the update to the owner's thread.
    t.home.post([&t] { ++t.greeted; });
    co_await conn.write(std::string_view("hello\n"), 5s);
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        netloop::announce(server);
        tally t{server.owner()};
        auto handler = [&t](netloop::connection c) { return greet(t, std::move(c)); };
        netloop::serve_options options{.threads = 2, .balance = netloop::balance_mode::hand_off};
        co_await server.serve(handler, options);
        std::printf("greeted %llu clients\n", static_cast<unsigned long long>(t.greeted));
    });
}
