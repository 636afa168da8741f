// SPDX-License-Identifier: MIT
// Production: one handler behind TCP, TLS and a Unix socket at once; local peers by uid.
#include <array>
#include <string>
#include <unistd.h>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    // Over a Unix socket the kernel tells who the peer is: here, only root and our own user.
    if (auto peer = conn.credentials(); peer && peer->uid != 0 && peer->uid != ::getuid()) {
        co_await conn.write(std::string_view("not for you\n"), 5s);
        co_return;
    }
    std::array<std::byte, 16384> buf;
    for (;;) {
        auto n = co_await conn.read(buf, 60s);
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

netloop::task<> serve_quietly(netloop::server& s) {
    try {
        co_await s.serve(echo, {.idle_timeout = 60s});
    } catch (const netloop::error&) {
    }
}

int main() {
    return netloop::run([]() -> netloop::task<> {
        auto tls = netloop::tls_context::server("/etc/app/cert.pem", "/etc/app/key.pem");
        tls.set_alpn({"app/1"});
        auto plain = netloop::server::listen(netloop::address::parse("127.0.0.1:7000"));
        auto secure = netloop::server::listen(netloop::address::parse("0.0.0.0:7443"),
                                              {.tls = tls, .handshake_timeout = 5s});
        auto local = netloop::server::listen(netloop::address::unix_socket("/run/app/app.sock"),
                                             {.file_mode = 0660});
        netloop::spawn(serve_quietly(plain));
        netloop::spawn(serve_quietly(secure));
        co_await serve_quietly(local);  // until SIGINT/SIGTERM; run() cancels the others
    });
}
