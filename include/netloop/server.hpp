// SPDX-License-Identifier: MIT
// server: a listening socket, the stream of its connections, and announce().
#pragma once

#include <netloop/detail/config.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>

#include <netloop/address.hpp>
#include <netloop/connection.hpp>
#include <netloop/export.hpp>
#include <netloop/loop.hpp>
#include <netloop/proxy.hpp>
#include <netloop/task.hpp>

namespace netloop {

namespace detail {
struct server_state;
struct server_access;
}  // namespace detail

class server;

/// What a server has done so far. A snapshot; cheap enough to take per request.
struct server_stats {
    std::uint64_t accepted = 0;            ///< connections accepted (rejected ones included)
    std::uint64_t rejected = 0;            ///< accepted and closed at once by a limit
    std::uint64_t active = 0;              ///< connections open now
    std::uint64_t peak_active = 0;         ///< the most open at once, all loops together
    std::uint64_t bytes_read = 0;          ///< bytes read from all connections
    std::uint64_t bytes_written = 0;       ///< bytes written to all connections
    std::uint64_t accept_errors = 0;       ///< failed accept attempts (EMFILE, ECONNABORTED, ...)
    std::uint64_t handshake_failures = 0;  ///< TLS handshakes that failed or timed out
    /// Connections refused for their PROXY protocol header: missing, invalid, too slow, or from
    /// a source outside `listen_options::proxy_from`
    std::uint64_t proxy_failures = 0;
};

/// The connections a server accepts, as an awaitable generator.
class NETLOOP_API connection_stream {
public:
    /// Waits for the next connection.
    ///
    /// Yields `nullopt` once the server is closed, and when the awaiting task is cancelled
    /// (which cancels the accept itself: no connection is taken and dropped). Transient accept
    /// errors (ECONNABORTED, and EMFILE, ENFILE, ENOBUFS, ENOMEM with a back-off from 5 ms to
    /// 1 s) are retried without ending the stream. Throws `error` with `errc::accept_failed`
    /// on any other accept failure (with TLS or a PROXY header too, to every task then
    /// waiting).
    ///
    /// Any number of tasks may await `next()` on one server, through one stream or several:
    /// each connection goes to exactly one of them, and waiting costs no CPU. With TLS or a
    /// PROXY header, connections are accepted while someone waits, prepared side by side (at
    /// most `listen_options::max_preparing` at once) and handed out in the order they became
    /// ready; one that becomes ready when nobody waits any more is kept for the next call, and
    /// closed if the server closes first. Cancelling one waiter ends only its wait; once nobody
    /// waits, no accept is pending.
    ///
    /// Out of memory for a connection it accepted, `next()` closes that connection, logs it
    /// (error) and waits for the next one. It throws `std::bad_alloc` only before it took a
    /// connection (none is lost), and the stream stays usable: call `next()` again.
    [[nodiscard]] task<std::optional<connection>> next();

private:
    friend class server;
    explicit connection_stream(std::shared_ptr<detail::server_state> state) noexcept;
    std::shared_ptr<detail::server_state> state_;
};

/// No limit: the default of `serve_options`' counts.
inline constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();

/// What `serve()` does with a connection over `max_connections`.
enum class limit_policy {
    pause,   ///< stop accepting until a slot frees; the kernel's backlog holds the rest
    reject,  ///< accept and close at once (no linger), counted in `stats().rejected`
};

/// How a multi-core `serve()` (`threads > 1`) spreads connections over its loops.
enum class balance_mode {
    /// One acceptor on the server's loop hands each accepted socket to the next loop in turn
    /// (round-robin): an even spread, one accept path, and nothing asked of the kernel.
    hand_off,
    /// One listener per loop on the same port (SO_REUSEPORT); the kernel spreads connections
    /// by a hash of their addresses: no hand-off cost, but the spread is only even on average,
    /// and the server must be made with `listen_options{.reuse_port = true}`.
    reuse_port,
};

/// How `listen()` sets up the socket.
struct listen_options {
    int backlog = 128;
    /// SO_REUSEPORT: other sockets (of this user) may bind the same port; needed by
    /// `balance_mode::reuse_port`.
    bool reuse_port = false;
    /// For an IPv6 address: IPV6_V6ONLY, set explicitly (never inherited from the system's
    /// default). False makes `[::]` take IPv4 clients too.
    bool v6_only = true;
    /// For a Unix socket path: the file's mode (e.g. `0660`), set before any client can
    /// connect; -1 leaves what the umask gives.
    int file_mode = -1;
    /// A server `tls_context`: every connection is TLS. `next()` and `serve()` hand over a
    /// connection only after its handshake succeeded; one that fails or takes longer than
    /// `handshake_timeout` is closed and counted in `stats().handshake_failures`. Handshakes
    /// run side by side, each in a task of its own: a client that stays silent delays nobody.
    tls_context tls{};
    duration handshake_timeout = std::chrono::seconds(10);
    /// HAProxy's PROXY protocol: with anything but `off`, every connection must begin with a
    /// header of the versions named, sent by a source in `proxy_from`; `remote_address()` is
    /// then the client's address the header carries (`proxy_address()` the balancer's), and
    /// `serve()`'s per-IP limit and logs use it. The header is read (byte-exactly: nothing after
    /// it is consumed) and validated before `next()` or `serve()` hands the connection over, and
    /// before its TLS handshake. A connection from a source outside `proxy_from`, or with a
    /// missing, invalid or oversized header, or one not complete within `proxy_header_timeout`,
    /// is closed and counted in `stats().proxy_failures`: never trusted. A `LOCAL` header (a
    /// balancer's health check) is accepted and keeps the socket's own peer address. Unix socket
    /// peers are in no network: on a Unix listener the socket file's mode decides who may send a
    /// header.
    netloop::proxy_protocol proxy_protocol = netloop::proxy_protocol::off;
    /// The sources trusted to send a PROXY header (the balancers): loopback only by default.
    std::vector<network> proxy_from = loopback_networks();
    /// The whole header's bound, from accept: a client that sends it slowly is cut at this.
    duration proxy_header_timeout = std::chrono::seconds(5);
    /// With TLS or a PROXY header: how many accepted connections may be in preparation (header
    /// read, handshake) at once, under `next()` and `serve()` together. At the bound the
    /// listener stops accepting until a preparation ends (succeeds, fails or times out); the
    /// kernel's backlog holds the newcomers. Bounds what a flood of silent connects holds (an
    /// fd and a TLS stream's buffers each, for up to `handshake_timeout`) while leaving room for
    /// a burst of real handshakes. `listen()` throws `errc::invalid_argument` for 0.
    std::size_t max_preparing = 256;
};

/// How `serve()` runs connections. An aggregate: `{.max_connections = 1000, .idle_timeout = 30s}`.
struct serve_options {
    /// Handlers running at once; over it, `on_limit` decides.
    std::size_t max_connections = unlimited;
    limit_policy on_limit = limit_policy::pause;
    /// Connections at once from one IP address; over it, the new one is closed and counted.
    std::size_t max_connections_per_ip = unlimited;
    /// No byte in either direction for this long: the connection is cut (closed at once, no
    /// linger; what was written still goes out), the handler's pending read or write ends with
    /// `errc::timeout`.
    duration idle_timeout = no_timeout;
    /// The whole connection's bound, from accept; then as `idle_timeout`.
    duration connection_deadline = no_timeout;
    /// On shutdown, how long handlers may go on before they are cancelled; their connections
    /// then close gracefully (bounded by `linger_timeout`), so what they wrote reaches a peer
    /// that is still sending. A second cancellation cuts instead: no linger, an immediate end.
    duration drain_timeout = std::chrono::seconds(10);
    /// On shutdown, end the connections that stand between two messages, as Go's
    /// `Server.Shutdown` (idle connections) and SwiftNIO's quiescing do: one waiting for input
    /// at a message boundary (see `connection::begin_message()` for where messages begin) with
    /// nothing buffered, no byte waiting in the kernel and no write pending is ended at once;
    /// one inside a message runs on until it reaches a boundary — a read there ends instead of
    /// waiting — or until `drain_timeout`. The handler's read throws `errc::connection_closed`
    /// ("server draining"), `connection::draining()` tells it why, and the connection closes
    /// gracefully. A handler that marks no boundaries (raw `read()`s only: a byte stream such as
    /// echo) is ended once a read has waited `drain_idle_grace` with no byte. False: every
    /// handler runs until it ends or `drain_timeout`.
    bool close_idle_on_drain = true;
    /// For handlers that mark no message boundaries (raw `read()`s, no `begin_message()`): how
    /// long a read must wait with no byte for `close_idle_on_drain` to end it. Longer than the
    /// pauses of your streams; such idle peers see EOF this long after the drain begins.
    duration drain_idle_grace = std::chrono::milliseconds(250);
    /// How long a closing connection discards input while waiting for the peer to close.
    duration linger_timeout = std::chrono::seconds(2);
    /// Loops serving connections. 1 serves on the server's own loop; more starts `threads - 1`
    /// further loops, each an `io_context` run by its own thread, for the time of `serve()`. A
    /// connection lives on one loop for its whole life, so a handler needs no lock for its own
    /// I/O; limits, `stats()`, `close()` and the drain cover every loop.
    std::size_t threads = 1;
    balance_mode balance = balance_mode::hand_off;
    /// Called once, on the server's loop, when the drain begins (e.g. `notify_stopping`).
    std::function<void()> on_drain = nullptr;
};

/// A connection handler: owns the connection; when it returns, the connection closes
/// gracefully (see `connection::close()`).
using connection_handler = std::function<task<>(connection)>;

/// A listening socket: TCP on IPv4/IPv6, or a Unix domain stream socket.
///
/// Thread safety: `close()` is safe from any thread and any task; the rest belongs to the loop's
/// thread. The destructor closes the socket.
class NETLOOP_API server {
public:
    /// Listens on `port` on all interfaces (IPv6 dual-stack, or IPv4 where IPv6 is off).
    ///
    /// The socket is non-blocking with SO_REUSEADDR; port 0 asks the kernel for a free port,
    /// which `local_port()` then tells. Throws `error` with `errc::socket_creation_failed`,
    /// `errc::bind_failed` (e.g. `sys_errno() == EADDRINUSE`) or `errc::listen_failed`.
    [[nodiscard]] static server listen(std::uint16_t port, int backlog = 128,
                                       loop& l = loop::current());

    /// Listens on one interface, IPv4 or IPv6 (an IPv6 socket is IPv6-only), or on a Unix
    /// socket (`address::unix_socket`). Throws as above.
    ///
    /// A Unix socket path: a socket file left by a crashed run (nothing accepts on it) is
    /// removed first; a live one, or a file that is not a socket, is left alone and the call
    /// throws `errc::bind_failed` with EADDRINUSE (telling them apart takes one connect, which
    /// the live server sees as a client that closes at once). `close()` removes the file this
    /// server made.
    [[nodiscard]] static server listen(const address& at, int backlog = 128,
                                       loop& l = loop::current());

    /// Listens on one interface with `options` (SO_REUSEPORT, backlog). Throws as above.
    [[nodiscard]] static server listen(const address& at, const listen_options& options,
                                       loop& l = loop::current());

    server(server&&) noexcept;
    server& operator=(server&&) noexcept;
    ~server();

    /// The port the kernel bound, the ephemeral one included (0 for a Unix socket).
    [[nodiscard]] std::uint16_t local_port() const noexcept;

    /// The address the kernel bound.
    [[nodiscard]] const address& local_address() const noexcept;

    /// The stream of accepted connections; any number of streams share one server.
    [[nodiscard]] connection_stream connections() const;

    /// Stops listening: a pending `next()` yields `nullopt` promptly, a new connect is refused,
    /// and the socket file of a Unix socket is removed. Idempotent; safe from any task and any
    /// thread.
    void close() noexcept;

    /// False once `close()` was called.
    [[nodiscard]] bool is_open() const noexcept;

    /// Accepts connections and runs `handler` for each in its own task, until the server is
    /// closed or the awaiting task is cancelled; then drains: stops accepting at once (a new
    /// connect is refused), lets handlers finish for up to `drain_timeout`, cancels the rest,
    /// and returns when every handler has ended. A second cancellation during the drain
    /// cancels the handlers at once ("force now").
    ///
    /// With TLS or a PROXY header, each connection is prepared (header, handshake) before its
    /// handler runs, at most `listen_options::max_preparing` at once (accepting pauses at the
    /// bound). A connection refused by `max_connections` (with `limit_policy::reject`) or
    /// `max_connections_per_ip` is closed at once, with no lingering close: nothing was read.
    ///
    /// Accept errors such as EMFILE back off and resume by themselves. An exception that
    /// escapes a handler is logged with the remote address and costs only that connection;
    /// so does running out of memory (`std::bad_alloc`) anywhere on a connection's path, from
    /// its accept to its close: it is logged, that connection is closed, and the server goes on.
    /// Throws `error` with `errc::accept_failed` only on an accept failure that cannot pass.
    [[nodiscard]] task<> serve(connection_handler handler, serve_options options = {});

    /// Replaces the TLS context of a server made with `listen_options::tls`: handshakes that
    /// begin afterwards use `tls` (its certificates, trust, ALPN, session tickets), on every loop
    /// of a multi-core `serve()`; connections already established, and handshakes under way,
    /// keep the context they began with, which lives as long as they do. Build `tls` completely
    /// first; afterwards it is read-only. A certificate renewal without a restart: read the new
    /// files into a new `tls_context::server()` (which throws on a bad file, leaving the server
    /// as it was) and pass it here. Safe from any thread.
    ///
    /// Throws `error` with `errc::invalid_argument` if the server was made without TLS, or if
    /// `tls` is empty or a client context.
    void set_tls(const tls_context& tls);

    /// What this server has done so far. Safe from any thread.
    [[nodiscard]] server_stats stats() const noexcept;

    /// The loop this server lives on.
    [[nodiscard]] netloop::loop& owner() const noexcept;

    /// The listening socket's file descriptor, still owned by the server.
    [[nodiscard]] int native_handle() const noexcept;

private:
    friend struct detail::server_access;
    explicit server(std::shared_ptr<detail::server_state> state) noexcept;
    std::shared_ptr<detail::server_state> state_;
};

/// Prints `listening on <address>` and a newline to stdout, and flushes: how tests and scripts
/// learn the port.
NETLOOP_API void announce(const server& s);

}  // namespace netloop
