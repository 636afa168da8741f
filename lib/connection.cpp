// SPDX-License-Identifier: MIT
// connection: read and write with per-call deadlines, addresses and socket options.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <sys/socket.h>

#include <netloop/connection.hpp>

#include "connection_impl.hpp"

#if NETLOOP_HAS_TLS
#include <openssl/ssl.h>
#endif

namespace netloop {
namespace detail {

connection_impl::connection_impl(loop& l, stream_socket s, address peer,
                                 std::shared_ptr<server_counters> c)
    : owner(l), stream(std::move(s)), remote(std::move(peer)), counters(std::move(c)) {
    asio::error_code ignored;
    // Non-blocking, so the synchronous read_some after a readiness wait never blocks the loop.
    stream.socket().non_blocking(true, ignored);
    if (counters) counters->opened();
}

connection_impl::~connection_impl() {
    if (!closed && counters) counters->closed();
}

const address& connection_impl::local() const {
    if (!local_) {
        asio::error_code ec;
        auto ep = stream.socket().local_endpoint(ec);
        local_ = ec ? address() : from_generic(ep);
    }
    return *local_;
}

std::string connection_impl::describe(const char* operation) const {
    return std::string(operation) + " " + remote.to_string();
}

}  // namespace detail

connection::connection(std::shared_ptr<detail::connection_impl> impl) noexcept
    : impl_(std::move(impl)) {}

connection::connection(connection&&) noexcept = default;

connection& connection::operator=(connection&& other) noexcept {
    if (this != &other) {
        close();
        impl_ = std::move(other.impl_);
    }
    return *this;
}

connection::~connection() { close(); }

namespace detail {
namespace {

// read(span) and read_some(span): one coroutine, called by both without a frame of their own.
// `eof_is_zero`: the peer's orderly EOF returns 0 instead of throwing.
task<std::size_t> read_into(connection_impl& c, std::span<std::byte> buf, duration timeout,
                            bool eof_is_zero) {
    if (buf.empty()) throw error(errc::invalid_argument, c.describe("read") + " (empty buffer)");
    c.settle();
    if (c.read_end != c.read_begin) co_return c.take_buffered(buf);
    if (c.closed) throw error(errc::connection_closed, c.describe("read"));
    if (c.drain_ends_read()) throw c.drained_error("read");
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    operation op(c, c.reader, timeout, slot);
    auto [ec, n] =
        co_await c.stream.async_read_some(asio::buffer(buf.data(), buf.size()), op.token());
    if (ec) {
        if (eof_is_zero && ec == asio::error::eof) {
            c.peer_closed = true;  // as failure() records it: a close needs no linger
            co_return 0;
        }
        throw c.failure("read", ec, c.reader);
    }
    c.count_read(n);
    co_return n;
}

}  // namespace
}  // namespace detail

task<std::size_t> connection::read(std::span<std::byte> buf, duration timeout) {
    return detail::read_into(*impl_, buf, timeout, false);
}

task<std::size_t> connection::read_some(std::span<std::byte> buf, duration timeout) {
    return detail::read_into(*impl_, buf, timeout, true);
}

task<std::vector<std::byte>> connection::read(std::size_t max_bytes, duration timeout) {
    auto& c = *impl_;
    if (max_bytes == 0) throw error(errc::invalid_argument, c.describe("read") + " (max_bytes 0)");
    c.settle();
    if (c.read_end != c.read_begin) {
        std::vector<std::byte> out(std::min(max_bytes, c.read_end - c.read_begin));
        c.take_buffered(out);
        co_return out;
    }
    if (c.closed) throw error(errc::connection_closed, c.describe("read"));
    if (c.drain_ends_read()) throw c.drained_error("read");
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    detail::operation op(c, c.reader, timeout, slot);
    if (c.stream.is_tls()) {
        // Decrypted bytes may wait inside OpenSSL while the socket has none, so a readiness
        // wait does not work here: read into a buffer of at most one record's size.
        std::vector<std::byte> out(std::min<std::size_t>(max_bytes, 16384));
        auto [ec, n] =
            co_await c.stream.async_read_some(asio::buffer(out.data(), out.size()), op.token());
        if (ec) throw c.failure("read", ec, c.reader);
        c.count_read(n);
        out.resize(n);
        co_return out;
    }
    // Wait for readiness with no buffer at all, then read what is there into this thread's
    // scratch space (a non-blocking read that cannot be interrupted by another task on this
    // thread), and hand out exactly that many bytes: no FIONREAD, no buffer while idle.
    thread_local std::array<std::byte, 65536> scratch;
    auto& socket = c.stream.socket();
    for (;;) {
        auto [ec] = co_await socket.async_wait(asio::socket_base::wait_read, op.token());
        if (ec) throw c.failure("read", ec, c.reader);
        asio::error_code read_ec;
        std::size_t n = socket.read_some(
            asio::buffer(scratch.data(), std::min(max_bytes, scratch.size())), read_ec);
        if (read_ec == asio::error::would_block || read_ec == asio::error::try_again) continue;
        if (read_ec) throw c.failure("read", read_ec, c.reader);
        c.count_read(n);
        co_return std::vector<std::byte>(scratch.begin(),
                                         scratch.begin() + static_cast<std::ptrdiff_t>(n));
    }
}

task<> connection::write(std::span<const std::byte> bytes, duration timeout) {
    auto& c = *impl_;
    if (c.closed) throw error(errc::connection_closed, c.describe("write"));
    if (bytes.empty()) co_return;
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    detail::operation op(c, c.writer, timeout, slot);
    auto [ec, n] = co_await c.stream.async_write(asio::buffer(bytes.data(), bytes.size()),
                                                 detail::transfer_all_touching{&c}, op.token());
    c.count_written(n);
    if (!ec) co_return;
    auto failure = c.failure("write", ec, c.writer, n);
    // Over TLS a record may be half-sent: the stream cannot go on, so the connection ends.
    if (c.stream.is_tls()) c.abort();
    throw failure;
}

task<> connection::write(std::string_view text, duration timeout) {
    return write(std::as_bytes(std::span(text.data(), text.size())), timeout);
}

bool connection::is_open() const noexcept { return impl_ && !impl_->closed; }

void connection::begin_message() noexcept {
    impl_->marks_boundaries = true;
    impl_->message_open = true;
}

void connection::end_message() noexcept {
    impl_->marks_boundaries = true;
    impl_->message_open = false;
}

bool connection::draining() const noexcept {
    return impl_->counters && impl_->counters->draining.load(std::memory_order_relaxed);
}

const address& connection::remote_address() const noexcept { return impl_->remote; }

std::optional<address> connection::proxy_address() const { return impl_->proxy; }

const address& connection::local_address() const noexcept {
    try {
        return impl_->local();
    } catch (...) {
        static const address none;  // no memory for the address text: say nothing
        return none;
    }
}

bool connection::is_tls() const noexcept { return impl_ && impl_->stream.is_tls(); }

std::string connection::tls_alpn() const {
#if NETLOOP_HAS_TLS
    auto* tls = impl_ ? impl_->stream.tls() : nullptr;
    if (tls == nullptr) return {};
    const unsigned char* name = nullptr;
    unsigned int length = 0;
    ::SSL_get0_alpn_selected(tls->native_handle(), &name, &length);
    return name == nullptr ? std::string()
                           : std::string(reinterpret_cast<const char*>(name), length);
#else
    return {};
#endif
}

namespace {

void set_int_option(detail::connection_impl& c, int level, int name, int value, const char* what) {
    if (::setsockopt(c.stream.socket().native_handle(), level, name, &value, sizeof value) != 0) {
        throw error(errc::option_failed, std::string(what) + " " + c.remote.to_string(), errno);
    }
}

int whole_seconds(duration d) {
    auto s = std::chrono::ceil<std::chrono::seconds>(d).count();
    return static_cast<int>(std::clamp<std::int64_t>(s, 1, 32767));
}

bool is_unix(const detail::connection_impl& c) { return c.remote.is_unix() || c.local().is_unix(); }

}  // namespace

void connection::set_no_delay(bool on) {
    if (is_unix(*impl_)) return;
    set_int_option(*impl_, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, "TCP_NODELAY");
}

void connection::set_keep_alive(bool on, duration idle, duration interval, int count) {
    if (is_unix(*impl_)) return;
    set_int_option(*impl_, SOL_SOCKET, SO_KEEPALIVE, on ? 1 : 0, "SO_KEEPALIVE");
    if (!on) return;
    if (count < 1) throw error(errc::invalid_argument, "SO_KEEPALIVE (probe count < 1)");
#if defined(TCP_KEEPIDLE)
    set_int_option(*impl_, IPPROTO_TCP, TCP_KEEPIDLE, whole_seconds(idle), "TCP_KEEPIDLE");
#else
    throw error(errc::not_supported, "TCP_KEEPIDLE " + impl_->remote.to_string());
#endif
    set_int_option(*impl_, IPPROTO_TCP, TCP_KEEPINTVL, whole_seconds(interval), "TCP_KEEPINTVL");
    set_int_option(*impl_, IPPROTO_TCP, TCP_KEEPCNT, count, "TCP_KEEPCNT");
}

void connection::set_buffer_sizes(int send_bytes, int receive_bytes) {
    if (send_bytes < 0 || receive_bytes < 0) {
        throw error(errc::invalid_argument, "buffer sizes (negative)");
    }
    if (send_bytes > 0) set_int_option(*impl_, SOL_SOCKET, SO_SNDBUF, send_bytes, "SO_SNDBUF");
    if (receive_bytes > 0) {
        set_int_option(*impl_, SOL_SOCKET, SO_RCVBUF, receive_bytes, "SO_RCVBUF");
    }
}

asio::generic::stream_protocol::socket& connection::socket() noexcept {
    return impl_->stream.socket();
}

std::optional<peer_credentials> connection::credentials() const {
    auto& c = *impl_;
    if (!is_unix(c)) return std::nullopt;
#if defined(__linux__)
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(c.stream.socket().native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) !=
        0) {
        throw error(errc::option_failed, "SO_PEERCRED " + c.remote.to_string(), errno);
    }
    return peer_credentials{cred.pid, cred.uid, cred.gid};
#else
    throw error(errc::not_supported, "SO_PEERCRED " + c.remote.to_string());
#endif
}

loop& connection::owner() const noexcept { return impl_->owner; }

}  // namespace netloop
