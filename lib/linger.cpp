// SPDX-License-Identifier: MIT
// The end of a connection: the graceful close with its bounded linger, the reset, half-close.
#include <array>
#include <sys/socket.h>

#include <netloop/connection.hpp>

#include "connection_impl.hpp"
#include "loop_access.hpp"

#if NETLOOP_HAS_TLS
#include <openssl/ssl.h>
#endif

namespace netloop::detail {

void stream::shutdown_send() noexcept {
#if NETLOOP_HAS_TLS
    if (tls_) {
        // TLS's half-close is close_notify. OpenSSL sends it from SSL_shutdown, which asio runs
        // at once in async_shutdown's initiation; RECEIVED_SHUTDOWN, set just for that call,
        // keeps it from also waiting for the peer's, so reading goes on afterwards.
        auto* ssl = tls_->native_handle();
        int before = ::SSL_get_shutdown(ssl);
        if ((before & SSL_SENT_SHUTDOWN) != 0) return;
        ::SSL_set_shutdown(ssl, before | SSL_RECEIVED_SHUTDOWN);
        try {
            tls_->async_shutdown([settings = settings_](const asio::error_code&) {});
        } catch (...) {
            // No memory for the operation: the peer sees EOF at close() instead.
        }
        ::SSL_set_shutdown(ssl, (::SSL_get_shutdown(ssl) & ~SSL_RECEIVED_SHUTDOWN) |
                                    (before & SSL_RECEIVED_SHUTDOWN));
        return;
    }
#endif
    asio::error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_send, ignored);
}

bool connection_impl::mark_closed() noexcept {
    if (closed) return false;
    closed = true;
    if (counters) counters->closed();
    if (timer) timer->cancel();
    // Pending operations complete with operation_aborted, reported as connection_closed (or
    // as timeout when a limit closed the connection).
    if (reader.pending) reader.signal.emit(asio::cancellation_type::terminal);
    if (writer.pending) writer.signal.emit(asio::cancellation_type::terminal);
    return true;
}

namespace {

// Runs to its end, bounded by linger_timeout, whatever happens to the task that spawned it:
// cutting it short (when run()'s coroutine ends, or on a forced drain) would close the socket
// with unread input, a reset that destroys what write() already accepted. The bound closes the
// socket itself, not only the read pending at that moment: a peer that keeps sending would
// otherwise find the loop between two reads when the bound fires, and the next read unbounded.
task<> linger(std::shared_ptr<connection_impl> c) {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto& socket = c->stream.socket();
    if (!c->timer) c->timer = std::make_unique<asio::steady_timer>(c->owner.context());
    c->timer->expires_after(c->linger_timeout);
    c->timer->async_wait([c](const asio::error_code& ec) {
        asio::error_code ignored;
        if (!ec) c->stream.socket().close(ignored);
    });
    auto unbound = asio::bind_cancellation_slot(asio::cancellation_slot(), use_tuple);
#if NETLOOP_HAS_TLS
    if (auto* tls = c->stream.tls()) {
        // close_notify first, so the peer can tell the end from a truncation; we do not wait
        // for its reply (RECEIVED_SHUTDOWN tells OpenSSL not to), the discard below does.
        auto* ssl = tls->native_handle();
        ::SSL_set_shutdown(ssl, ::SSL_get_shutdown(ssl) | SSL_RECEIVED_SHUTDOWN);
        auto [shutdown_ec] = co_await tls->async_shutdown(unbound);
        (void)shutdown_ec;
    }
#endif
    asio::error_code ec;
    socket.shutdown(asio::socket_base::shutdown_send, ec);
    if (!ec) {
        std::array<std::byte, 2048> discard;
        for (;;) {
            auto [read_ec, n] = co_await socket.async_read_some(asio::buffer(discard), unbound);
            if (read_ec) break;
        }
    }
    c->timer->cancel();
    socket.close(ec);
}

}  // namespace

void connection_impl::close() noexcept {
    if (limit_expired || (counters && counters->cutting.load(std::memory_order_relaxed))) {
        cut();
        return;
    }
    if (!mark_closed() || !stream.socket().is_open()) return;
    // After the peer's EOF nothing more can arrive, so closing now cannot reset the connection
    // and lose what was written: the kernel sends the rest and the FIN. That saves the linger's
    // shutdown, its read and its task. (TLS still sends close_notify through the linger.)
    if (peer_closed && !stream.is_tls()) {
        asio::error_code ignored;
        stream.socket().close(ignored);
        return;
    }
    if (!loop_access::accepts_tasks(owner)) {
        asio::error_code ignored;
        stream.socket().close(ignored);
        return;
    }
    try {
        spawn(linger(shared_from_this()), owner);
    } catch (...) {
        asio::error_code ignored;  // no memory for the linger: close at once
        stream.socket().close(ignored);
    }
}

void connection_impl::cut() noexcept {
    if (!mark_closed()) return;
    auto& socket = stream.socket();
    if (!socket.is_open()) return;
    int fd = socket.native_handle();
    ::shutdown(fd, SHUT_WR);
    // Closing with unread input would reset the connection and destroy what write() already
    // accepted: discard what has arrived (a bounded amount, without waiting), then close. The
    // kernel then sends the rest and the FIN on its own; only a peer that goes on sending after
    // this could still provoke a reset.
    std::array<std::byte, 16384> discard;
    for (int i = 0; i < 64; ++i) {
        if (::recv(fd, discard.data(), discard.size(), MSG_DONTWAIT) <= 0) break;
    }
    asio::error_code ignored;
    socket.close(ignored);
}

void connection_impl::abort() noexcept {
    mark_closed();
    auto& socket = stream.socket();
    asio::error_code ignored;
    if (socket.is_open()) socket.set_option(asio::socket_base::linger(true, 0), ignored);
    socket.close(ignored);
}

}  // namespace netloop::detail

namespace netloop {

void connection::shutdown_write() noexcept {
    if (impl_ && !impl_->closed) impl_->stream.shutdown_send();
}

void connection::close() noexcept {
    if (impl_) impl_->close();
}

void connection::abort() noexcept {
    if (impl_) impl_->abort();
}

}  // namespace netloop
