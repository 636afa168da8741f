// SPDX-License-Identifier: MIT
// What a drain asks of one connection: does it stand between two messages, and if so, end its
// read there.
#include <cerrno>
#include <sys/socket.h>

#include "connection_impl.hpp"

#if NETLOOP_HAS_TLS
#include <openssl/ssl.h>
#endif

namespace netloop::detail {

bool stream::input_waiting() noexcept {
#if NETLOOP_HAS_TLS
    // Decrypted bytes, or a record begun and not complete (a message under way): SSL_has_pending.
    if (tls_ && ::SSL_has_pending(tls_->native_handle()) == 1) return true;
#endif
    std::byte b{};
    auto n = ::recv(socket_.native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}

// Between messages: a handler that says where they begin, past the first byte of the stream, no
// message the handler opened, no frame a framing call is in the middle of, nothing buffered, no
// write pending (a reply still going out), and no byte of a new message waiting in the kernel —
// that one would be read, not dropped.
bool connection_impl::idle_now() noexcept {
    return !closed && marks_boundaries && !fresh && !message_open && !frame_open &&
           !writer.pending && buffered().empty() && !stream.input_waiting();
}

bool connection_impl::end_if_idle() noexcept {
    if (!reader.pending || !idle_now()) return false;
    reader.drained = true;
    reader.signal.emit(asio::cancellation_type::terminal);
    return true;
}

// A handler that parses raw reads and marks nothing is a byte stream whose boundaries are
// unknown: it counts as idle when a read has waited, with nothing buffered and no write pending,
// since the previous look — the peer sent nothing for a whole interval. A peer that streams
// completes reads all the time and is not ended; one that pauses longer than the interval is.
bool connection_impl::drain_look() noexcept {
    bool quiet = reads_begun == drain_mark;
    drain_mark = reads_begun;
    if (marks_boundaries) return end_if_idle();
    if (!quiet || closed || !reader.pending || frame_open || writer.pending ||
        !buffered().empty() || stream.input_waiting()) {
        return false;
    }
    reader.drained = true;
    reader.signal.emit(asio::cancellation_type::terminal);
    return true;
}

error connection_impl::drained_error(const char* operation) const {
    return error(errc::connection_closed, describe(operation) + " (server draining)");
}

}  // namespace netloop::detail
