// SPDX-License-Identifier: MIT
// tls_return: the exchange of nginx's stream `return "x"` on a netloop TLS server, for
// bench/tls.sh's handshake costs: accept, handshake, write one byte, close. Both servers then do
// exactly the same work per connection, so their CPU per connection compares the handshakes and
// the layers around them, not two protocols. Without --tls-cert/--tls-key: the same over plain
// TCP.
#include <cstdio>
#include <string>
#include <string_view>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

namespace {

netloop::task<> give_one_byte(netloop::connection conn) {
    conn.set_no_delay(true);  // as nginx sets on every accepted connection
    co_await conn.write(std::string_view("x"), 10s);
}

}  // namespace

// Usage: tls_return HOST:PORT [--tls-cert FILE --tls-key FILE]
int main(int argc, char** argv) {
    std::string where = "127.0.0.1:0";
    std::string cert;
    std::string key;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--tls-cert" && i + 1 < argc) {
            cert = argv[++i];
        } else if (arg == "--tls-key" && i + 1 < argc) {
            key = argv[++i];
        } else if (!arg.starts_with("--")) {
            where = arg;
        } else {
            std::fprintf(stderr, "usage: tls_return HOST:PORT [--tls-cert FILE --tls-key FILE]\n");
            return 2;
        }
    }
    return netloop::run([&]() -> netloop::task<> {
        netloop::listen_options options;
        if (!cert.empty()) options.tls = netloop::tls_context::server(cert, key);
        auto server = netloop::server::listen(netloop::address::parse(where), options);
        netloop::announce(server);
        co_await server.serve(give_one_byte);
    });
}
