// SPDX-License-Identifier: MIT
// A program that uses netloop from outside: one connection, one echo, exit 0 on success.
#include <cstdio>
#include <string>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

int main() {
    return netloop::run([]() -> netloop::task<int> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
        auto client = co_await netloop::connect(server.local_address(), 5s);
        auto conns = server.connections();
        auto accepted = co_await conns.next();
        if (!accepted) co_return 1;
        co_await client.write(std::string_view("ping"), 5s);
        std::array<std::byte, 4> buf;
        auto n = co_await accepted->read(buf, 5s);
        co_await accepted->write(std::span(buf).first(n), 5s);
        std::array<std::byte, 4> back;
        auto m = co_await client.read(back, 5s);
        std::string text(reinterpret_cast<const char*>(back.data()), m);
        std::printf("consumer got \"%s\"\n", text.c_str());
        co_return text == "ping" ? 0 : 1;
    });
}
