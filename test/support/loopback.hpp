// SPDX-License-Identifier: MIT
// Loopback helpers: connected pairs, byte patterns, read-all loops, an echo handler.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include <netloop/netloop.hpp>

namespace netloop::test {

using namespace std::chrono_literals;

// `size` bytes cycling through all 256 values, shifted by `seed`.
inline std::vector<std::byte> pattern(std::size_t size, unsigned seed = 0) {
    std::vector<std::byte> out(size);
    for (std::size_t i = 0; i < size; ++i) {
        out[i] = static_cast<std::byte>((i * 7 + seed + i / 251) & 0xff);
    }
    return out;
}

struct connected_pair {
    connection server_side;
    connection client_side;
};

// A server on `at` (port 0), one client connected to it, and the accepted end.
inline task<connected_pair> make_pair(const address& at = address::parse("127.0.0.1:0")) {
    auto s = server::listen(at);
    auto client = co_await connect(s.local_address(), 5s);
    auto conns = s.connections();
    auto accepted = co_await conns.next();
    if (!accepted) throw std::runtime_error("no connection accepted");
    co_return connected_pair{std::move(*accepted), std::move(client)};
}

// Reads exactly `n` bytes (each read bounded by `timeout`).
inline task<std::vector<std::byte>> read_n(connection& c, std::size_t n, duration timeout = 10s) {
    std::vector<std::byte> out(n);
    std::size_t got = 0;
    while (got < n) {
        got += co_await c.read(std::span(out).subspan(got), timeout);
    }
    co_return out;
}

// Echoes until the peer closes; any other ending is rethrown.
inline task<> echo_until_closed(connection c) {
    std::array<std::byte, 16384> buf;
    try {
        for (;;) {
            auto n = co_await c.read(buf, 30s);
            co_await c.write(std::span(buf).first(n), 30s);
        }
    } catch (const error& e) {
        if (e.kind() != errc::connection_closed) throw;
    }
}

}  // namespace netloop::test
