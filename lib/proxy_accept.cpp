// SPDX-License-Identifier: MIT
// The PROXY protocol header of an accepted connection: trusted source, read byte-exactly,
// validated, applied; then the TLS handshake. The step before next() or a handler sees it.
#include <cerrno>
#include <sys/socket.h>

#include <netloop/error.hpp>

#include "logging.hpp"
#include "proxy_protocol.hpp"
#include "server_state.hpp"

namespace netloop::detail {
namespace {

duration left(clock::time_point until) {
    if (until == never) return no_timeout;
    return std::max(duration::zero(), until - clock::now());
}

// Reads the header into the framing buffer, byte-exactly: each round waits until the socket is
// readable, peeks at what arrived, and takes (recv) only the bytes the parser says belong to
// the header — a v1 line up to its LF, a v2 header up to its length. Nothing after the header
// is consumed, so the client's first bytes stay in the kernel for the handler or for TLS. The
// whole header is bounded by `settings.timeout` (a slow drip is cut there), its size by the
// parser's limits (107 bytes for v1, proxy_v2_default_limit for v2).
task<> read_proxy_header(std::shared_ptr<connection_impl> c, const proxy_settings& settings) {
    if (!c->remote.is_unix() && !contains(settings.from, c->remote)) {
        throw error(errc::protocol_error,
                    "PROXY header " + c->remote.to_string() + " (source not in proxy_from)");
    }
    const std::size_t limit =
        settings.mode == proxy_protocol::v1 ? proxy_v1_max_line : proxy_v2_default_limit;
    if (c->read_buffer.size() < limit) c->read_buffer.resize(limit);
    auto* buf = c->read_buffer.data();
    const int fd = c->stream.socket().native_handle();
    const auto until = deadline_after(clock::now(), settings.timeout);
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    std::size_t have = 0;
    for (;;) {
        asio::error_code ec;
        {
            operation op(*c, c->reader, left(until), slot);
            auto [wait_ec] =
                co_await c->stream.socket().async_wait(asio::socket_base::wait_read, op.token());
            ec = wait_ec;
        }
        if (ec) throw c->failure("read PROXY header", ec, c->reader);
        auto n = ::recv(fd, buf + have, limit - have, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
            auto code = asio::error_code(errno, asio::system_category());
            throw c->failure("read PROXY header", code, c->reader);
        }
        if (n == 0) throw c->failure("read PROXY header", asio::error::eof, c->reader);
        auto seen = have + static_cast<std::size_t>(n);
        auto r = parse_proxy_header(std::span<const std::byte>(buf, seen), settings.mode);
        if (r.status == proxy_parse_result::invalid) {
            throw error(errc::protocol_error,
                        c->describe("PROXY header") + " (" + std::string(r.reason) + ")");
        }
        auto take = r.status == proxy_parse_result::done ? r.header.length - have
                                                         : static_cast<std::size_t>(n);
        auto got = ::recv(fd, buf + have, take, MSG_DONTWAIT);
        if (got <= 0) continue;  // cannot happen with the bytes peeked; look again
        c->count_read(static_cast<std::size_t>(got));
        have += static_cast<std::size_t>(got);
        if (have != r.header.length || r.status != proxy_parse_result::done) continue;
        const auto& h = r.header;
        if (h.command == proxy_command::proxy &&
            (h.family == proxy_family::tcp4 || h.family == proxy_family::tcp6)) {
            c->proxy = c->remote;
            c->remote = h.source;
        } else if (h.command == proxy_command::proxy && h.family == proxy_family::unix_stream) {
            c->proxy = c->remote;
            c->remote = proxy_unix_address(h.source_unix);
        }
        c->read_begin = c->read_end = c->pending_consume = 0;
        c->fresh = true;  // the header is not part of the stream: its first message is to come
        if (log_enabled(spdlog::level::debug)) {
            log(spdlog::level::debug, "PROXY v{} header from {}: client {}", h.version,
                c->proxy ? c->proxy->to_string() : c->remote.to_string(),
                c->proxy ? c->remote.to_string() : std::string("none (LOCAL or UNKNOWN)"));
        }
        co_return;
    }
}

}  // namespace

task<bool> prepare_or_count(std::shared_ptr<connection_impl> c, const proxy_settings& proxy,
                            std::shared_ptr<tls_state> tls, duration handshake_timeout,
                            server_counters& counters) {
    // A header or handshake under way is inside a message: a drain lets it finish (it has its
    // own timeouts). The handler's reads start at a boundary.
    c->frame_open = true;
    struct boundary_after {
        connection_impl& c;
        ~boundary_after() { c.frame_open = false; }
    } at_end{*c};
    if (proxy.mode != proxy_protocol::off) {
        try {
            co_await read_proxy_header(c, proxy);
        } catch (const error& e) {
            if (e.kind() == errc::cancelled) throw;
            server_counters::add(counters.proxy_failures, 1);
            log(spdlog::level::info, "{}", e.what());
            co_return false;
        }
    }
    if (!tls) co_return true;
    try {
        co_await tls_handshake(c, std::move(tls), {}, handshake_timeout);
        co_return true;
    } catch (const error& e) {
        if (e.kind() == errc::cancelled) throw;
        server_counters::add(counters.handshake_failures, 1);
        log(spdlog::level::info, "{}", e.what());
        co_return false;
    }
}

}  // namespace netloop::detail
