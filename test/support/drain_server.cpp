// SPDX-License-Identifier: MIT
// drain_server: a server of one framed protocol under serve(), as a real process for the drain
// tests (test/drain_test.cpp).
//
//   drain_server HOST:PORT --frame exact|line [--proxy] [--tls CERT KEY] [--grace MS]
//
// exact: a 4-byte big-endian length, then that many bytes (two read_exactly calls); the reply is
// the same header and body. line: read_until("\n"); the reply is the line and "\n". The drain
// timeout is 60 s, so a test's bound never meets it. SIGTERM starts the drain; exit status 0.
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

namespace {

netloop::task<> exact(netloop::connection conn) {
    for (;;) {
        std::array<std::byte, 4> header{};
        co_await conn.read_exactly(header, 30s);
        std::uint32_t length = 0;
        for (auto b : header) length = (length << 8) | std::to_integer<std::uint32_t>(b);
        if (length > (1u << 20)) throw netloop::error(netloop::errc::message_too_large, "frame");
        std::vector<std::byte> body(length);
        co_await conn.read_exactly(body, 30s);
        co_await conn.write(header, 30s);
        co_await conn.write(body, 30s);
    }
}

netloop::task<> line(netloop::connection conn) {
    for (;;) {
        auto frame = co_await conn.read_until("\n", 4096, 30s);
        std::string reply(frame);
        reply += '\n';
        co_await conn.write(reply, 30s);
    }
}

// The handlers end by the peer's EOF or the drain: both are the normal end, not worth a log line.
netloop::task<> quietly(netloop::task<> handler) {
    try {
        co_await std::move(handler);
    } catch (const netloop::error& e) {
        if (e.kind() != netloop::errc::connection_closed) throw;
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: drain_server HOST:PORT --frame exact|line [...]\n");
        return 2;
    }
    std::string frame;
    netloop::listen_options listen;
    netloop::serve_options serve{.drain_timeout = 60s};
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--frame" && i + 1 < argc) {
            frame = argv[++i];
        } else if (a == "--proxy") {
            listen.proxy_protocol = netloop::proxy_protocol::v1;
        } else if (a == "--tls" && i + 2 < argc) {
            listen.tls = netloop::tls_context::server(argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (a == "--grace" && i + 1 < argc) {
            serve.drain_idle_grace = std::chrono::milliseconds(std::stoi(argv[++i]));
        } else {
            std::fprintf(stderr, "drain_server: bad argument %s\n", a.c_str());
            return 2;
        }
    }
    auto log = spdlog::stderr_logger_mt("drain_server");
    log->set_level(spdlog::level::debug);
    netloop::set_logger(log);
    return netloop::run([&]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse(argv[1]), listen);
        netloop::announce(server);
        auto handler = [&frame](netloop::connection c) -> netloop::task<> {
            return quietly(frame == "exact" ? exact(std::move(c)) : line(std::move(c)));
        };
        co_await server.serve(handler, serve);
    });
}
