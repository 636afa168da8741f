// SPDX-License-Identifier: MIT
// connection: one stream (TCP or Unix socket), read and written by coroutines with per-call
// timeouts.
#pragma once

#include <netloop/detail/config.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

#include <netloop/address.hpp>
#include <netloop/export.hpp>
#include <netloop/loop.hpp>
#include <netloop/task.hpp>
#include <netloop/tls.hpp>

namespace netloop {

namespace detail {
struct connection_impl;
struct connection_access;
}  // namespace detail

/// The credentials of a Unix socket peer's process, taken when it connected (SO_PEERCRED).
struct peer_credentials {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
};

/// One connection, TCP or Unix domain stream socket: an accepted peer or a connected client.
/// Everything below works the same over both, except where a call names TCP.
///
/// One `read()` and one `write()` may be pending at the same time (full duplex, e.g. from two
/// tasks); two reads or two writes at once are not allowed. Cancelling the task that awaits a
/// read or a write cancels that operation in the kernel-facing layer and throws `error` with
/// `errc::cancelled`; the connection stays usable. The destructor calls `close()`.
/// Thread safety: the loop's thread only.
class NETLOOP_API connection {
public:
    connection(connection&&) noexcept;
    connection& operator=(connection&&) noexcept;
    ~connection();

    /// Reads at least one byte into `buf` and returns how many were read (bytes already in
    /// the framing buffer first, without waiting).
    ///
    /// Throws `error` with `errc::connection_closed` on orderly EOF (at once, even while a
    /// timeout is pending), `errc::connection_reset` if the peer reset, `errc::timeout` if
    /// nothing arrived within `timeout`; after a timeout the connection stays usable.
    /// Allocates nothing in steady state (one coroutine frame over Asio's read, both from
    /// Asio's per-thread cache; `test/alloc_test.cpp` counts it).
    [[nodiscard]] task<std::size_t> read(std::span<std::byte> buf, duration timeout);

    /// As `read(span, timeout)`, but the peer's orderly EOF returns 0 instead of throwing: a
    /// handler learns "the peer is done" without an exception, whose unwinding costs ~10,000
    /// instructions or more per coroutine frame it leaves (bench/RESULTS.md). Everything else
    /// throws as `read()` does, including `errc::connection_closed` for a connection closed on
    /// this side or ended by a drain, and for a TLS peer's EOF without close_notify.
    [[nodiscard]] task<std::size_t> read_some(std::span<std::byte> buf, duration timeout);

    /// Waits until bytes are ready, then returns up to `max_bytes` of them in a new buffer.
    ///
    /// The buffer exists only once data is there, so an idle connection costs no buffer; the
    /// bytes are read into per-thread scratch space and the buffer made to their size, with no
    /// extra system call. Throws as `read(span, timeout)`.
    [[nodiscard]] task<std::vector<std::byte>> read(std::size_t max_bytes, duration timeout);

    /// Reads exactly `buf.size()` bytes; `timeout` bounds the whole call.
    ///
    /// Throws as `read()`. On `errc::connection_closed` before the end, the bytes that did
    /// arrive are at the start of `buf` and the rest is unspecified. From its first byte to its
    /// last the call is inside a message: a drain never ends it there (see `begin_message()`).
    [[nodiscard]] task<> read_exactly(std::span<std::byte> buf, duration timeout);

    /// Reads up to `delimiter` and returns the frame before it, for line and record protocols.
    ///
    /// The frame is a view into the connection's buffer, valid until the next read call on
    /// this connection; the delimiter is consumed with it; bytes that arrived after it stay
    /// buffered for the next call. `timeout` bounds the whole call. Throws `error` with
    /// `errc::message_too_large` when the frame, delimiter not counted, would exceed `max_length`
    /// bytes — nothing is consumed, so the caller may close, or skip with `buffered()`/`consume()`;
    /// `errc::connection_closed` on EOF before a delimiter (the partial frame stays in
    /// `buffered()`); otherwise as `read()`. While a partial frame is buffered the connection
    /// is inside a message: a drain never ends it there (see `begin_message()`).
    [[nodiscard]] task<std::string_view> read_until(std::string_view delimiter,
                                                    std::size_t max_length, duration timeout);

    /// The bytes read into the connection's buffer and not consumed yet: a parser reads them
    /// in place, `consume()`s what it used, and calls `fill()` when it needs more. Changes
    /// nothing: a frame that `read_until` returned stays valid.
    [[nodiscard]] std::span<const std::byte> buffered() const noexcept;

    /// Drops the first `n` buffered bytes (at most all of them).
    void consume(std::size_t n) noexcept;

    /// Reads at least one more byte into the buffer and returns how many arrived.
    ///
    /// Throws `error` with `errc::message_too_large` if `max_buffered` bytes are already
    /// buffered; otherwise as `read()`.
    [[nodiscard]] task<std::size_t> fill(duration timeout, std::size_t max_buffered = 1 << 20);

    /// Writes all of `bytes`, or throws.
    ///
    /// Throws `error` with `errc::timeout` if not all were written within `timeout`, with
    /// `bytes_written()` saying how many were; the connection stays usable and the caller may
    /// resume from there. `errc::connection_reset` if the peer is gone. Never raises SIGPIPE.
    /// Over TLS a write that times out or is cancelled may have sent half a record, so it
    /// closes the connection (with a reset) instead: `bytes_written()` still says how many of
    /// `bytes` went out, but there is nothing to resume.
    [[nodiscard]] task<> write(std::span<const std::byte> bytes, duration timeout);

    /// Writes all of `text`; see `write(span, timeout)`.
    [[nodiscard]] task<> write(std::string_view text, duration timeout);

    /// Shuts down the sending side (the peer reads EOF); reading goes on. Harmless if closed.
    /// Over TLS it sends close_notify, TLS's end of data.
    void shutdown_write() noexcept;

    /// Closes gracefully and returns at once. Pending operations end with
    /// `errc::connection_closed`; then, on the loop, the sending side is shut down after what
    /// was written, and input is read and discarded until the peer closes (at most the linger
    /// timeout, 2 s unless `serve_options` say otherwise) before the socket is closed — so
    /// unread input never turns the close into a reset that destroys data already written.
    /// The linger runs to its end even while `run()` winds down, so `run()` may wait up to the
    /// linger timeout for a peer that neither reads nor closes. A connection that has already
    /// read the peer's EOF (plain, not TLS) has nothing to discard and closes at once.
    /// Idempotent.
    void close() noexcept;

    /// Closes at once with a reset (SO_LINGER 0): the peer gets ECONNRESET, and data not yet
    /// sent is dropped. For refusing misbehaving peers.
    void abort() noexcept;

    /// False once `close()` was called.
    [[nodiscard]] bool is_open() const noexcept;

    /// Says that a message of your protocol has begun: until `end_message()`, a draining
    /// `serve()` lets this connection's handler go on (up to `serve_options::drain_timeout`)
    /// instead of ending its next read. For handlers that parse raw `read()`s into their own
    /// buffer, or read one message in several framing calls (a header, then a body).
    ///
    /// Where messages begin, for a drain: a connection whose first byte has not arrived yet (as
    /// Go's `Server.Shutdown` keeps new connections), bytes in the framing buffer (`buffered()`,
    /// a partial `read_until` frame), a `read_exactly` past its first byte, a TLS handshake or
    /// PROXY header under way, and everything between `begin_message()` and `end_message()` are
    /// inside a message; any other moment at which the handler waits for input is a boundary.
    /// A handler that only calls raw `read()`s and marks nothing is a byte stream (echo) whose
    /// boundaries netloop cannot know: a drain ends it once a read has waited
    /// `serve_options::drain_idle_grace` with no byte. Cheap: sets a flag, no system call.
    void begin_message() noexcept;

    /// Says that the connection stands between two messages again (after `begin_message()`): a
    /// draining `serve()` ends it the next time it waits for input with nothing buffered — that
    /// read throws `error` with `errc::connection_closed` ("server draining"). Cheap: sets a flag.
    void end_message() noexcept;

    /// True once the `serve()` running this connection began its drain (on shutdown), so a
    /// protocol with a goodbye of its own can send it; false for a connection outside `serve()`.
    /// Cheap: reads a flag.
    [[nodiscard]] bool draining() const noexcept;

    /// The peer's address: behind a load balancer that sends a PROXY protocol header
    /// (`listen_options::proxy_protocol`), the client's address the header carries.
    [[nodiscard]] const address& remote_address() const noexcept;

    /// The load balancer's address, when a PROXY protocol header replaced `remote_address()`
    /// with the client's; `nullopt` otherwise (no header, or a `LOCAL` or `UNKNOWN` one).
    [[nodiscard]] std::optional<address> proxy_address() const;

    /// The local end's address.
    [[nodiscard]] const address& local_address() const noexcept;

    /// True for a TLS connection (a server listening with `listen_options::tls`, or a
    /// `connect` with a `tls_context`).
    [[nodiscard]] bool is_tls() const noexcept;

    /// The ALPN protocol the TLS handshake agreed on; empty without TLS or without ALPN.
    [[nodiscard]] std::string tls_alpn() const;

    /// The peer process's pid, uid and gid, for a Unix socket (local authorization); nullopt
    /// over TCP. Throws `error` with `errc::not_supported` for a Unix socket on a system other
    /// than Linux (SO_PEERCRED is Linux's).
    [[nodiscard]] std::optional<peer_credentials> credentials() const;

    /// TCP_NODELAY: send small writes at once instead of coalescing them (Nagle). Off by
    /// default, as the kernel has it. A no-op on a Unix socket, which has no Nagle.
    /// Throws `error` with `errc::option_failed`.
    void set_no_delay(bool on);

    /// SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT: after `idle` without
    /// traffic, probe every `interval`, and give up after `count` unanswered probes (pending
    /// I/O then fails with `errc::connection_reset` or a read/write error). Off by default.
    /// A no-op on a Unix socket (a local peer's death is seen at once).
    /// Throws `error` with `errc::option_failed`, or `errc::not_supported` where the system has
    /// no TCP_KEEPIDLE.
    void set_keep_alive(bool on, duration idle = std::chrono::seconds(60),
                        duration interval = std::chrono::seconds(10), int count = 6);

    /// SO_SNDBUF and SO_RCVBUF (the kernel may round or double them; 0 leaves one as it is).
    /// Throws `error` with `errc::option_failed`.
    void set_buffer_sizes(int send_bytes, int receive_bytes);

    /// The socket, for options netloop does not wrap. Do not start I/O on it behind netloop.
    /// Asio's generic stream socket serves TCP and Unix sockets alike.
    [[nodiscard]] asio::generic::stream_protocol::socket& socket() noexcept;

    /// The loop this connection lives on.
    [[nodiscard]] netloop::loop& owner() const noexcept;

private:
    friend struct detail::connection_access;
    // Wraps the state netloop made for an accepted or connected socket.
    explicit connection(std::shared_ptr<detail::connection_impl> impl) noexcept;
    std::shared_ptr<detail::connection_impl> impl_;
};

/// Connects to `to` (an IP address or a Unix socket) and returns the connection.
///
/// Throws `error` with `errc::connect_failed` (with errno, e.g. ECONNREFUSED) if the connect
/// fails, `errc::timeout` if it does not complete within `timeout`, `errc::cancelled` if the
/// awaiting task is cancelled.
[[nodiscard]] NETLOOP_API task<connection> connect(const address& to, duration timeout,
                                                   loop& l = loop::current());

/// Connects to `to`, then performs a TLS handshake as a client of `tls`; `timeout` bounds both.
/// The server's certificate is verified (unless `tls.set_verify_peer(false)`) for
/// `server_name`, which is also sent as SNI when it is a host name; empty means `to`'s IP
/// address (or, for a Unix socket, the chain alone).
///
/// Throws as `connect()`, and `error` with `errc::tls_failed` (OpenSSL's reason in `what()`,
/// e.g. "certificate verify failed") if the handshake fails.
[[nodiscard]] NETLOOP_API task<connection> connect(const address& to, const tls_context& tls,
                                                   duration timeout, std::string server_name = {},
                                                   loop& l = loop::current());

/// Resolves `host` (a name such as "localhost", or an IP literal) with the system resolver
/// (getaddrinfo: /etc/hosts, then the name servers of resolv.conf) and returns its addresses
/// with `port`, IPv6 and IPv4 as the system orders them.
///
/// The lookup runs on a resolver thread, never on the loop: the process shares up to 16 of
/// them, so a lookup that hangs on a silent name server holds no other; past 16 at once, a
/// lookup waits for a free thread. `timeout` bounds the whole call, that wait included,
/// whatever the name servers do.
///
/// Throws `error` with `errc::resolve_failed` (with the resolver's message) if the name does
/// not resolve, `errc::timeout` once `timeout` has passed, `errc::cancelled` if the awaiting
/// task is cancelled. getaddrinfo cannot be stopped: after a timeout or a cancellation the
/// lookup may go on in the background, and its answer is dropped (also when the loop is gone).
[[nodiscard]] NETLOOP_API task<std::vector<address>> resolve(std::string_view host,
                                                             std::uint16_t port, duration timeout,
                                                             loop& l = loop::current());

/// Connects to `"host:port"` (a name or `[v6]`/v4 literal), trying each resolved address in
/// turn; `timeout` bounds the whole call: the name's lookup (as `resolve()`) and the connects
/// together. Throws as `resolve()` and `connect()`: `errc::timeout` once `timeout` has passed,
/// also while the lookup hangs.
[[nodiscard]] NETLOOP_API task<connection> connect(std::string_view host_and_port, duration timeout,
                                                   loop& l = loop::current());

/// `connect("host:port")` over TLS: the certificate is verified for `host`, which is sent as
/// SNI; `timeout` bounds the lookup, the connects and the handshake together. Throws as both.
[[nodiscard]] NETLOOP_API task<connection> connect(std::string_view host_and_port,
                                                   const tls_context& tls, duration timeout,
                                                   loop& l = loop::current());

}  // namespace netloop
