// SPDX-License-Identifier: MIT
// server: a listening socket, the stream of its connections, and announce().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include <netloop/address.hpp>
#include <netloop/connection.hpp>
#include <netloop/loop.hpp>
#include <netloop/task.hpp>

namespace netloop {

namespace detail {
struct server_state;
}

class server;

/// What a server has done so far. A snapshot; cheap enough to take per request.
struct server_stats {
    std::uint64_t accepted = 0;       ///< connections accepted (rejected ones included)
    std::uint64_t rejected = 0;       ///< accepted and closed at once by a limit
    std::uint64_t active = 0;         ///< connections open now
    std::uint64_t peak_active = 0;    ///< the most that were open at once
    std::uint64_t bytes_read = 0;     ///< bytes read from all connections
    std::uint64_t bytes_written = 0;  ///< bytes written to all connections
    std::uint64_t accept_errors = 0;  ///< failed accept attempts (EMFILE, ECONNABORTED, ...)
};

/// The connections a server accepts, as an awaitable generator.
class connection_stream {
public:
    /// Waits for the next connection.
    ///
    /// Yields `nullopt` once the server is closed, and when the awaiting task is cancelled
    /// (which cancels the accept itself: no connection is taken and dropped). Transient accept
    /// errors (ECONNABORTED, and EMFILE, ENFILE, ENOBUFS, ENOMEM with a back-off from 5 ms to
    /// 1 s) are retried without ending the stream. Throws `error` with `errc::accept_failed`
    /// on any other accept failure.
    [[nodiscard]] task<std::optional<connection>> next();

private:
    friend class server;

    /// What a server has done so far. A snapshot; cheap enough to take per request.
    struct server_stats {
        std::uint64_t accepted = 0;       ///< connections accepted (rejected ones included)
        std::uint64_t rejected = 0;       ///< accepted and closed at once by a limit
        std::uint64_t active = 0;         ///< connections open now
        std::uint64_t peak_active = 0;    ///< the most that were open at once
        std::uint64_t bytes_read = 0;     ///< bytes read from all connections
        std::uint64_t bytes_written = 0;  ///< bytes written to all connections
        std::uint64_t accept_errors = 0;  ///< failed accept attempts (EMFILE, ECONNABORTED, ...)
    };
    explicit connection_stream(std::shared_ptr<detail::server_state> state) noexcept;
    std::shared_ptr<detail::server_state> state_;
};

/// A listening TCP socket.
///
/// Thread safety: `close()` is safe from any thread and any task; the rest belongs to the loop's
/// thread. The destructor closes the socket.
class server {
public:
    /// Listens on `port` on all interfaces (IPv6 dual-stack, or IPv4 where IPv6 is off).
    ///
    /// The socket is non-blocking with SO_REUSEADDR; port 0 asks the kernel for a free port,
    /// which `local_port()` then tells. Throws `error` with `errc::socket_creation_failed`,
    /// `errc::bind_failed` (e.g. `sys_errno() == EADDRINUSE`) or `errc::listen_failed`.
    [[nodiscard]] static server listen(std::uint16_t port, int backlog = 128,
                                       loop& l = loop::shared());

    /// Listens on one interface, IPv4 or IPv6 (an IPv6 socket is IPv6-only). Throws as above.
    [[nodiscard]] static server listen(const address& at, int backlog = 128,
                                       loop& l = loop::shared());

    server(server&&) noexcept;
    server& operator=(server&&) noexcept;
    ~server();

    /// The port the kernel bound, the ephemeral one included.
    [[nodiscard]] std::uint16_t local_port() const noexcept;

    /// The address the kernel bound.
    [[nodiscard]] const address& local_address() const noexcept;

    /// The stream of accepted connections; any number of streams share one server.
    [[nodiscard]] connection_stream connections() const;

    /// Stops listening: a pending `next()` yields `nullopt` promptly, a new connect is refused.
    /// Idempotent; safe from any task and any thread.
    void close() noexcept;

    /// False once `close()` was called.
    [[nodiscard]] bool is_open() const noexcept;

    /// What this server has done so far. Safe from any thread.
    [[nodiscard]] server_stats stats() const noexcept;

    /// The loop this server lives on.
    [[nodiscard]] netloop::loop& owner() const noexcept;

private:
    explicit server(std::shared_ptr<detail::server_state> state) noexcept;
    std::shared_ptr<detail::server_state> state_;
};

/// Prints `listening on <address>` and a newline to stdout, and flushes: how tests and scripts
/// learn the port.
void announce(const server& s);

}  // namespace netloop
