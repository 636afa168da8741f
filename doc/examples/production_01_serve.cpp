// SPDX-License-Identifier: MIT
// Production: every limit and timeout of serve(), logging to stderr, statistics at exit.
#include <array>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

netloop::task<> echo(netloop::connection conn) {
    std::array<std::byte, 16384> buf;
    for (;;) {
        auto n = co_await conn.read(buf, netloop::no_timeout);
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

int main() {
    auto log = spdlog::stderr_logger_mt("echo");
    log->set_level(spdlog::level::info);  // debug adds a line per connection
    netloop::set_logger(log);

    return netloop::run([&]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("0.0.0.0:7000"));
        netloop::announce(server);
        netloop::serve_options options{
            .max_connections = 10000,
            .on_limit = netloop::limit_policy::reject,  // accept and close, counted
            .max_connections_per_ip = 100,
            .idle_timeout = 5min,       // no byte either way
            .connection_deadline = 1h,  // however busy
            .drain_timeout = 30s,       // on the first SIGINT/SIGTERM
            .linger_timeout = 2s,       // per closing connection
        };
        co_await server.serve(echo, options);
        auto s = server.stats();
        log->info("{} accepted, {} rejected, {} bytes in, {} bytes out", s.accepted, s.rejected,
                  s.bytes_read, s.bytes_written);
    });
}
