// SPDX-License-Identifier: MIT
// Errors: one handler that meets every way a connection can end, and answers each.
#include <string>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> session(netloop::connection conn) {
    for (;;) {
        std::string reply;
        try {
            auto line = co_await conn.read_until("\n", 1024, 60s);
            reply = "you said: " + std::string(line) + "\n";
        } catch (const netloop::error& e) {
            switch (e.kind()) {
                case netloop::errc::connection_closed:  // EOF: the client is done
                case netloop::errc::connection_reset:   // the client is gone: nothing reaches it
                case netloop::errc::cancelled:          // the server is shutting down
                    co_return;
                case netloop::errc::timeout:  // a quiet minute; the connection still works
                    reply = "* quiet for a minute, bye\n";
                    break;
                case netloop::errc::message_too_large:  // no newline in 1024 bytes
                    reply = "* line too long, bye\n";
                    break;
                default:
                    throw;  // unexpected: logged by serve() with the client's address
            }
        }
        co_await conn.write(reply, 5s);
        if (reply.starts_with("* ")) co_return;  // the close is graceful: the reply arrives
    }
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        netloop::announce(server);
        co_await server.serve(session);
    });
}
