// SPDX-License-Identifier: MIT
// connection: reads and writes with per-call deadlines, connect().
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <sys/socket.h>
#include <tuple>

#include <asio/write.hpp>

#include <netloop/connection.hpp>

#include "connection_impl.hpp"
#include "framing.hpp"
#include "logging.hpp"
#include "loop_access.hpp"

namespace netloop {
namespace detail {
namespace {

address endpoint_or_empty(const stream_socket& s, bool remote) {
    asio::error_code ec;
    auto ep = remote ? s.remote_endpoint(ec) : s.local_endpoint(ec);
    return ec ? address() : from_generic(ep);
}

}  // namespace

connection_impl::connection_impl(loop& l, stream_socket s, std::shared_ptr<server_counters> c)
    : owner(l),
      socket(std::move(s)),
      remote(endpoint_or_empty(socket, true)),
      local(endpoint_or_empty(socket, false)),
      reader(l.context()),
      writer(l.context()),
      counters(std::move(c)) {
    asio::error_code ignored;
    // Non-blocking, so the synchronous read_some after a readiness wait never blocks the loop.
    socket.non_blocking(true, ignored);
    if (counters) counters->opened();
}

void connection_impl::begin(deadline& d, duration timeout) {
    d.pending = true;
    d.expired = false;
    auto now = std::chrono::steady_clock::now();
    if (timeout == no_timeout || timeout > std::chrono::steady_clock::time_point::max() - now) {
        d.at = std::chrono::steady_clock::time_point::max();
        return;  // an armed timer finds `at` in the future and re-arms for it: never fires
    }
    d.at = now + std::max(timeout, duration::zero());
    arm(d);
}

void connection_impl::arm(deadline& d) {
    if (!d.armed) {
        d.armed = true;
        d.timer.expires_at(d.at);
        d.timer.async_wait(
            [self = shared_from_this(), &d](const asio::error_code&) { self->on_timer(d); });
    } else if (d.timer.expiry() > d.at) {
        // Cancels the outstanding wait; its handler sees `at` is still ahead and re-arms.
        d.timer.expires_at(d.at);
    }
}

void connection_impl::on_timer(deadline& d) {
    d.armed = false;
    if (closed || !d.pending) return;
    if (std::chrono::steady_clock::now() >= d.at) {
        d.expired = true;
        d.signal.emit(asio::cancellation_type::terminal);
    } else if (d.at != std::chrono::steady_clock::time_point::max()) {
        arm(d);
    }
}

std::chrono::steady_clock::time_point connection_limits::due() const noexcept {
    auto idle_due = std::chrono::steady_clock::time_point::max();
    if (idle != no_timeout && idle < idle_due - last_activity) idle_due = last_activity + idle;
    return std::min(idle_due, hard_deadline);
}

void connection_impl::set_limits(duration idle, duration whole) {
    if (idle == no_timeout && whole == no_timeout) return;
    limits = std::make_unique<connection_limits>(owner.context());
    auto now = std::chrono::steady_clock::now();
    limits->idle = idle;
    limits->last_activity = now;
    if (whole != no_timeout && whole < limits->hard_deadline - now) {
        limits->hard_deadline = now + whole;
    }
    arm_limits();
}

void connection_impl::arm_limits() {
    // Activity only moves the due time later, so an armed timer never fires too late; when it
    // fires early it re-arms for the new due time.
    if (limits->armed) return;
    auto due = limits->due();
    if (due == std::chrono::steady_clock::time_point::max()) return;
    limits->armed = true;
    limits->timer.expires_at(due);
    limits->timer.async_wait(
        [self = shared_from_this()](const asio::error_code&) { self->on_limits(); });
}

void connection_impl::on_limits() {
    limits->armed = false;
    if (closed) return;
    if (std::chrono::steady_clock::now() < limits->due()) {
        arm_limits();
        return;
    }
    limit_expired = true;
    log(spdlog::level::debug, "connection {}: {}", remote.to_string(),
        std::chrono::steady_clock::now() >= limits->hard_deadline ? "connection deadline reached"
                                                                  : "idle timeout");
    close();
}

bool connection_impl::mark_closed() noexcept {
    if (closed) return false;
    closed = true;
    if (counters) counters->closed();
    reader.timer.cancel();
    writer.timer.cancel();
    if (limits) limits->timer.cancel();
    // Pending operations complete with operation_aborted, reported as connection_closed (or
    // as timeout when a limit closed the connection).
    if (reader.pending) reader.signal.emit(asio::cancellation_type::terminal);
    if (writer.pending) writer.signal.emit(asio::cancellation_type::terminal);
    return true;
}

namespace {

// Runs to its end, bounded by linger_timeout, whatever happens to the task that spawned it:
// cutting it short (when run()'s coroutine ends, or on a forced drain) would close the socket
// with unread input, a reset that destroys what write() already accepted.
task<> linger(std::shared_ptr<connection_impl> c) {
    co_await asio::this_coro::throw_if_cancelled(false);
    asio::steady_timer bound(c->owner.context(), c->linger_timeout);
    bound.async_wait([c](const asio::error_code& wait_ec) {
        asio::error_code ignored;
        if (!wait_ec) c->socket.cancel(ignored);
    });
#if NETLOOP_HAS_TLS
    if (c->tls) {
        // close_notify first, so the peer can tell the end from a truncation; we do not wait
        // for its reply (RECEIVED_SHUTDOWN tells OpenSSL not to), the discard below does.
        auto* ssl = c->tls->native_handle();
        ::SSL_set_shutdown(ssl, ::SSL_get_shutdown(ssl) | SSL_RECEIVED_SHUTDOWN);
        auto [shutdown_ec] = co_await c->tls->async_shutdown(
            asio::bind_cancellation_slot(asio::cancellation_slot(), use_tuple));
        (void)shutdown_ec;
    }
#endif
    asio::error_code ec;
    c->socket.shutdown(asio::socket_base::shutdown_send, ec);
    if (!ec) {
        std::array<std::byte, 2048> discard;
        for (;;) {
            auto [read_ec, n] = co_await c->socket.async_read_some(
                asio::buffer(discard),
                asio::bind_cancellation_slot(asio::cancellation_slot(), use_tuple));
            if (read_ec) break;
        }
    }
    bound.cancel();
    c->socket.close(ec);
}

}  // namespace

void connection_impl::close() noexcept {
    if (!mark_closed() || !socket.is_open()) return;
    if (!loop_access::accepts_tasks(owner)) {
        asio::error_code ignored;
        socket.close(ignored);
        return;
    }
    try {
        spawn(linger(shared_from_this()), owner);
    } catch (...) {
        asio::error_code ignored;  // no memory for the linger: close at once
        socket.close(ignored);
    }
}

void connection_impl::abort() noexcept {
    mark_closed();
    asio::error_code ignored;
    if (socket.is_open()) socket.set_option(asio::socket_base::linger(true, 0), ignored);
    socket.close(ignored);
}

std::string connection_impl::describe(const char* operation) const {
    return std::string(operation) + " " + remote.to_string();
}

error connection_impl::failure(const char* operation, const asio::error_code& ec, const deadline& d,
                               std::size_t bytes_written) const {
    bool reading = operation[0] == 'r';
    if (ec == asio::error::eof) {
        return error(errc::connection_closed, describe(operation) + " (peer closed)", 0,
                     bytes_written);
    }
    if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
        if (limit_expired) return error(errc::timeout, describe(operation), 0, bytes_written);
        if (closed) return error(errc::connection_closed, describe(operation), 0, bytes_written);
        if (d.expired) return error(errc::timeout, describe(operation), 0, bytes_written);
        return error(errc::cancelled, describe(operation), 0, bytes_written);
    }
    if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
        return error(errc::connection_reset, describe(operation), ec.value(), bytes_written);
    }
#if NETLOOP_HAS_TLS
    if (ec == asio::ssl::error::stream_truncated) {  // EOF without close_notify
        return error(errc::connection_closed, describe(operation) + " (peer closed, no TLS close)",
                     0, bytes_written);
    }
    if (ec.category() == asio::error::get_ssl_category()) {
        return error(errc::tls_failed, describe(operation) + " (" + ec.message() + ")", 0,
                     bytes_written);
    }
#endif
    return error(reading ? errc::read_failed : errc::write_failed, describe(operation), ec.value(),
                 bytes_written);
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

std::span<const std::byte> connection_impl::buffered() const noexcept {
    return {read_buffer.data() + read_begin, read_end - read_begin};
}

void connection_impl::consume(std::size_t n) noexcept {
    read_begin += std::min(n, read_end - read_begin);
    if (read_begin == read_end) {
        read_begin = read_end = 0;
        // A burst may have grown the buffer; an idle connection should not keep it.
        if (read_buffer.size() > 65536) std::vector<std::byte>().swap(read_buffer);
    }
}

void connection_impl::settle() noexcept {
    consume(pending_consume);
    pending_consume = 0;
}

std::size_t connection_impl::take_buffered(std::span<std::byte> out) noexcept {
    auto from = buffered();
    std::size_t n = std::min(out.size(), from.size());
    std::copy_n(from.begin(), n, out.begin());
    consume(n);
    return n;
}

task<std::size_t> read_some(connection_impl& c, std::span<std::byte> buf, duration timeout) {
    if (c.closed) throw error(errc::connection_closed, c.describe("read"));
    auto state = co_await asio::this_coro::cancellation_state;
    operation_scope scope(c, c.reader, timeout, state.slot());
    auto token = asio::bind_cancellation_slot(c.reader.signal.slot(), use_tuple);
#if NETLOOP_HAS_TLS
    if (c.tls) {
        auto [ec, n] = co_await c.tls->async_read_some(asio::buffer(buf.data(), buf.size()), token);
        if (ec) throw c.failure("read", ec, c.reader);
        c.count_read(n);
        co_return n;
    }
#endif
    auto [ec, n] = co_await c.socket.async_read_some(asio::buffer(buf.data(), buf.size()), token);
    if (ec) throw c.failure("read", ec, c.reader);
    c.count_read(n);
    co_return n;
}

task<std::size_t> fill(connection_impl& c, duration timeout, std::size_t max_buffered) {
    c.settle();
    std::size_t have = c.read_end - c.read_begin;
    if (have >= max_buffered) {
        throw error(errc::message_too_large,
                    c.describe("read") + " (" + std::to_string(have) + " bytes buffered)");
    }
    if (c.read_end == c.read_buffer.size()) {
        if (c.read_begin > 0) {
            std::copy(c.read_buffer.begin() + static_cast<std::ptrdiff_t>(c.read_begin),
                      c.read_buffer.begin() + static_cast<std::ptrdiff_t>(c.read_end),
                      c.read_buffer.begin());
            c.read_end -= c.read_begin;
            c.read_begin = 0;
        }
        if (c.read_end == c.read_buffer.size()) {
            c.read_buffer.resize(std::max<std::size_t>(4096, c.read_buffer.size() * 2));
        }
    }
    std::size_t room = std::min(c.read_buffer.size() - c.read_end, max_buffered - have);
    auto n = co_await read_some(c, std::span(c.read_buffer).subspan(c.read_end, room), timeout);
    c.read_end += n;
    co_return n;
}

// What remains of a deadline, for one call inside a longer operation.
duration remaining(std::chrono::steady_clock::time_point until, duration timeout) {
    if (timeout == no_timeout) return no_timeout;
    return std::max(duration::zero(), until - std::chrono::steady_clock::now());
}

std::chrono::steady_clock::time_point deadline_of(duration timeout) {
    auto now = std::chrono::steady_clock::now();
    if (timeout == no_timeout || timeout > std::chrono::steady_clock::time_point::max() - now) {
        return std::chrono::steady_clock::time_point::max();
    }
    return now + timeout;
}

}  // namespace detail

task<std::size_t> connection::read(std::span<std::byte> buf, duration timeout) {
    auto& c = *impl_;
    if (buf.empty()) throw error(errc::invalid_argument, c.describe("read") + " (empty buffer)");
    c.settle();
    if (c.read_end != c.read_begin) co_return c.take_buffered(buf);
    co_return co_await detail::read_some(c, buf, timeout);
}

task<> connection::read_exactly(std::span<std::byte> buf, duration timeout) {
    auto& c = *impl_;
    c.settle();
    auto until = detail::deadline_of(timeout);
    std::size_t got = c.take_buffered(buf);
    while (got < buf.size()) {
        got += co_await detail::read_some(c, buf.subspan(got), detail::remaining(until, timeout));
    }
}

task<std::string_view> connection::read_until(std::string_view delimiter, std::size_t max_length,
                                              duration timeout) {
    auto& c = *impl_;
    if (delimiter.empty()) {
        throw error(errc::invalid_argument, c.describe("read_until") + " (empty delimiter)");
    }
    c.settle();
    auto until = detail::deadline_of(timeout);
    std::size_t searched = 0;
    for (;;) {
        auto view = c.buffered();
        std::string_view text(reinterpret_cast<const char*>(view.data()), view.size());
        auto found = detail::find_frame(text, searched, delimiter, max_length);
        if (found.result == detail::frame_search::found) {
            c.pending_consume = found.length + delimiter.size();
            co_return text.substr(0, found.length);
        }
        if (found.result == detail::frame_search::too_large) {
            throw error(errc::message_too_large, c.describe("read_until") +
                                                     " (no delimiter within " +
                                                     std::to_string(max_length) + " bytes)");
        }
        searched = found.searched;
        auto limit = max_length + std::min(delimiter.size(), SIZE_MAX - max_length);
        (void)co_await detail::fill(c, detail::remaining(until, timeout), limit);
    }
}

std::span<const std::byte> connection::buffered() const noexcept {
    impl_->settle();
    return impl_->buffered();
}

void connection::consume(std::size_t n) noexcept {
    impl_->settle();
    impl_->consume(n);
}

task<std::size_t> connection::fill(duration timeout, std::size_t max_buffered) {
    return detail::fill(*impl_, timeout, max_buffered);
}

task<std::vector<std::byte>> connection::read(std::size_t max_bytes, duration timeout) {
    auto& c = *impl_;
    if (c.closed) throw error(errc::connection_closed, c.describe("read"));
    if (max_bytes == 0) throw error(errc::invalid_argument, c.describe("read") + " (max_bytes 0)");
    c.settle();
    if (c.read_end != c.read_begin) {
        std::vector<std::byte> out(std::min(max_bytes, c.read_end - c.read_begin));
        c.take_buffered(out);
        co_return out;
    }
#if NETLOOP_HAS_TLS
    if (c.tls) {
        // Decrypted bytes may wait inside OpenSSL while the socket has none, so a readiness
        // wait does not work here: read into a buffer of at most one record's size.
        std::vector<std::byte> out(std::min<std::size_t>(max_bytes, 16384));
        out.resize(co_await detail::read_some(c, out, timeout));
        co_return out;
    }
#endif
    auto state = co_await asio::this_coro::cancellation_state;
    detail::operation_scope scope(c, c.reader, timeout, state.slot());
    for (;;) {
        auto [ec] = co_await c.socket.async_wait(
            asio::socket_base::wait_read,
            asio::bind_cancellation_slot(c.reader.signal.slot(), detail::use_tuple));
        if (ec) throw c.failure("read", ec, c.reader);
        asio::error_code avail_ec;
        std::size_t ready = c.socket.available(avail_ec);
        std::vector<std::byte> out(std::clamp<std::size_t>(ready, 1, max_bytes));
        asio::error_code read_ec;
        std::size_t n = c.socket.read_some(asio::buffer(out.data(), out.size()), read_ec);
        if (read_ec == asio::error::would_block || read_ec == asio::error::try_again) continue;
        if (read_ec) throw c.failure("read", read_ec, c.reader);
        out.resize(n);
        c.count_read(n);
        co_return out;
    }
}

task<> connection::write(std::span<const std::byte> bytes, duration timeout) {
    auto& c = *impl_;
    if (c.closed) throw error(errc::connection_closed, c.describe("write"));
    if (bytes.empty()) co_return;
    auto state = co_await asio::this_coro::cancellation_state;
    detail::operation_scope scope(c, c.writer, timeout, state.slot());
    detail::transfer_all_touching condition{&c};
    auto token = asio::bind_cancellation_slot(c.writer.signal.slot(), detail::use_tuple);
#if NETLOOP_HAS_TLS
    if (c.tls) {
        auto [ec, n] = co_await asio::async_write(*c.tls, asio::buffer(bytes.data(), bytes.size()),
                                                  condition, token);
        c.count_written(n);
        if (ec) {
            // A record may be half-sent: the TLS stream cannot go on, so the connection ends.
            auto failure = c.failure("write", ec, c.writer, n);
            c.abort();
            throw failure;
        }
        co_return;
    }
#endif
    auto [ec, n] = co_await asio::async_write(c.socket, asio::buffer(bytes.data(), bytes.size()),
                                              condition, token);
    c.count_written(n);
    if (ec) throw c.failure("write", ec, c.writer, n);
}

task<> connection::write(std::string_view text, duration timeout) {
    return write(std::as_bytes(std::span(text.data(), text.size())), timeout);
}

void connection::shutdown_write() noexcept {
    if (!impl_ || impl_->closed) return;
#if NETLOOP_HAS_TLS
    if (impl_->tls) {
        // TLS's half-close is close_notify. OpenSSL sends it from SSL_shutdown, which asio runs
        // at once in async_shutdown's initiation; RECEIVED_SHUTDOWN, set just for that call,
        // keeps it from also waiting for the peer's, so reading goes on afterwards.
        auto* ssl = impl_->tls->native_handle();
        int before = ::SSL_get_shutdown(ssl);
        if ((before & SSL_SENT_SHUTDOWN) != 0) return;
        ::SSL_set_shutdown(ssl, before | SSL_RECEIVED_SHUTDOWN);
        try {
            impl_->tls->async_shutdown([keep = impl_](const asio::error_code&) {});
        } catch (...) {
            // No memory for the operation: the peer sees EOF at close() instead.
        }
        ::SSL_set_shutdown(ssl, (::SSL_get_shutdown(ssl) & ~SSL_RECEIVED_SHUTDOWN) |
                                    (before & SSL_RECEIVED_SHUTDOWN));
        return;
    }
#endif
    asio::error_code ignored;
    impl_->socket.shutdown(asio::socket_base::shutdown_send, ignored);
}

void connection::close() noexcept {
    if (impl_) impl_->close();
}

void connection::abort() noexcept {
    if (impl_) impl_->abort();
}

bool connection::is_open() const noexcept { return impl_ && !impl_->closed; }

const address& connection::remote_address() const noexcept { return impl_->remote; }

const address& connection::local_address() const noexcept { return impl_->local; }

namespace {

void set_int_option(detail::connection_impl& c, int level, int name, int value, const char* what) {
    if (::setsockopt(c.socket.native_handle(), level, name, &value, sizeof value) != 0) {
        throw error(errc::option_failed, std::string(what) + " " + c.remote.to_string(), errno);
    }
}

int whole_seconds(duration d) {
    auto s = std::chrono::ceil<std::chrono::seconds>(d).count();
    return static_cast<int>(std::clamp<std::int64_t>(s, 1, 32767));
}

}  // namespace

void connection::set_no_delay(bool on) {
    if (impl_->local.is_unix()) return;
    set_int_option(*impl_, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0, "TCP_NODELAY");
}

void connection::set_keep_alive(bool on, duration idle, duration interval, int count) {
    if (impl_->local.is_unix()) return;
    set_int_option(*impl_, SOL_SOCKET, SO_KEEPALIVE, on ? 1 : 0, "SO_KEEPALIVE");
    if (!on) return;
    if (count < 1) throw error(errc::invalid_argument, "SO_KEEPALIVE (probe count < 1)");
    set_int_option(*impl_, IPPROTO_TCP, TCP_KEEPIDLE, whole_seconds(idle), "TCP_KEEPIDLE");
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

asio::generic::stream_protocol::socket& connection::socket() noexcept { return impl_->socket; }

std::optional<peer_credentials> connection::credentials() const {
    auto& c = *impl_;
    if (!c.remote.is_unix() && !c.local.is_unix()) return std::nullopt;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(c.socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        throw error(errc::option_failed, "SO_PEERCRED " + c.remote.to_string(), errno);
    }
    return peer_credentials{cred.pid, cred.uid, cred.gid};
}

loop& connection::owner() const noexcept { return impl_->owner; }

task<connection> connect(const address& to, duration timeout, loop& l) {
    auto endpoint = detail::generic_endpoint(to);
    detail::stream_socket socket(l.context());
    asio::error_code ec;
    socket.open(endpoint.protocol(), ec);
    if (ec) throw error(errc::socket_creation_failed, "connect " + to.to_string(), ec.value());
    auto impl = std::make_shared<detail::connection_impl>(l, std::move(socket));
    connection conn(impl);  // closes the socket (and its timer) if the connect fails
    auto state = co_await asio::this_coro::cancellation_state;
    {
        detail::operation_scope scope(*impl, impl->writer, timeout, state.slot());
        auto token = asio::bind_cancellation_slot(impl->writer.signal.slot(), detail::use_tuple);
        auto [connect_ec] = co_await impl->socket.async_connect(endpoint, token);
        // A Unix listener with a full backlog makes the kernel answer EAGAIN at once (Asio
        // reports it as ENOBUFS) where TCP would retry its SYN: wait and retry, as TCP does,
        // within the call's timeout.
        auto pause = std::chrono::milliseconds(1);
        while (to.is_unix() && (connect_ec == asio::error::no_buffer_space ||
                                connect_ec == asio::error::try_again)) {
            asio::steady_timer backlog_full(l.context(), pause);
            auto [wait_ec] = co_await backlog_full.async_wait(token);
            if (wait_ec) {
                connect_ec = asio::error::operation_aborted;
                break;
            }
            pause = std::min(pause * 2, std::chrono::milliseconds(50));
            std::tie(connect_ec) = co_await impl->socket.async_connect(endpoint, token);
        }
        if (connect_ec == asio::error::operation_aborted) {
            throw error(impl->writer.expired ? errc::timeout : errc::cancelled,
                        "connect " + to.to_string());
        }
        if (connect_ec) {
            throw error(errc::connect_failed, "connect " + to.to_string(), connect_ec.value());
        }
    }
    impl->remote = detail::from_generic(impl->socket.remote_endpoint(ec));
    impl->local = detail::from_generic(impl->socket.local_endpoint(ec));
    detail::log(spdlog::level::debug, "connected to {}", impl->remote.to_string());
    co_return std::move(conn);
}

task<std::vector<address>> resolve(std::string_view host, std::uint16_t port, duration timeout,
                                   loop& l) {
    std::string name(host);
    if (name.empty()) throw error(errc::resolve_failed, "resolve \"\" (empty name)");
    // The resolver has no per-operation cancellation: the timer and a cancelled task both
    // cancel the resolver as a whole. Shared with the handlers, which may run after we return.
    struct lookup {
        explicit lookup(asio::io_context& c) : resolver(c), limit(c) {}
        asio::ip::tcp::resolver resolver;
        asio::steady_timer limit;
        bool timed_out = false;
    };
    auto job = std::make_shared<lookup>(l.context());
    if (timeout != no_timeout) {
        job->limit.expires_after(timeout);
        job->limit.async_wait([job](const asio::error_code& ec) {
            if (!ec) {
                job->timed_out = true;
                job->resolver.cancel();
            }
        });
    }
    auto state = co_await asio::this_coro::cancellation_state;
    auto slot = state.slot();
    if (slot.is_connected()) {
        slot.assign([job](asio::cancellation_type) { job->resolver.cancel(); });
    }
    auto [ec, results] = co_await job->resolver.async_resolve(
        name, std::to_string(port), asio::ip::resolver_base::numeric_service,
        asio::bind_cancellation_slot(asio::cancellation_slot(), detail::use_tuple));
    if (slot.is_connected()) slot.clear();
    job->limit.cancel();
    bool timed_out = job->timed_out;
    if (ec == asio::error::operation_aborted) {
        throw error(timed_out ? errc::timeout : errc::cancelled, "resolve " + name);
    }
    if (ec) {
        throw error(errc::resolve_failed, "resolve " + name + " (" + ec.message() + ")",
                    ec.category() == asio::system_category() ? ec.value() : 0);
    }
    std::vector<address> out;
    for (const auto& entry : results) out.emplace_back(entry.endpoint());
    if (out.empty()) throw error(errc::resolve_failed, "resolve " + name + " (no addresses)");
    co_return out;
}

namespace detail {

task<> tls_handshake(std::shared_ptr<connection_impl> c, std::shared_ptr<tls_state> settings,
                     std::string server_name, duration timeout) {
#if NETLOOP_HAS_TLS
    c->tls = std::make_unique<tls_stream>(c->socket, settings->context);
    c->tls_settings = settings;
    auto& stream = *c->tls;
    if (!settings->server_side) {
        asio::error_code not_ip;
        (void)asio::ip::make_address(server_name, not_ip);
        if (!server_name.empty() && not_ip) {
            ::SSL_set_tlsext_host_name(stream.native_handle(), server_name.c_str());
        }
        if (settings->verify_peer) {
            stream.set_verify_mode(asio::ssl::verify_peer);
            if (!server_name.empty()) {
                stream.set_verify_callback(asio::ssl::host_name_verification(server_name));
            }
        } else {
            stream.set_verify_mode(asio::ssl::verify_none);
        }
    } else if (settings->verify_peer) {
        stream.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
    }
    auto state = co_await asio::this_coro::cancellation_state;
    asio::error_code ec;
    {
        operation_scope scope(*c, c->reader, timeout, state.slot());
        auto [handshake_ec] = co_await stream.async_handshake(
            settings->server_side ? asio::ssl::stream_base::server : asio::ssl::stream_base::client,
            asio::bind_cancellation_slot(c->reader.signal.slot(), use_tuple));
        ec = handshake_ec;
    }
    if (!ec) co_return;
    auto what = "TLS handshake " + c->remote.to_string();
    if (ec.category() == asio::error::get_ssl_category()) {
        throw error(errc::tls_failed, what + " (" + ec.message() + ")");
    }
    auto e = c->failure("read", ec, c->reader);
    throw error(e.kind(), what + (e.kind() == errc::connection_closed ? " (peer closed)" : ""),
                e.sys_errno());
#else
    (void)c;
    (void)settings;
    (void)server_name;
    (void)timeout;
    throw error(errc::invalid_argument, "TLS handshake (netloop was built without TLS)");
#endif
}

namespace {

const std::shared_ptr<tls_state>& client_settings(const tls_context& tls, const std::string& to) {
    const auto& settings = tls_access::state(tls);
#if NETLOOP_HAS_TLS
    if (!settings || settings->server_side) {
        throw error(errc::invalid_argument, "connect " + to + " (needs a tls_context::client())");
    }
#else
    throw error(errc::invalid_argument, "connect " + to + " (netloop was built without TLS)");
#endif
    return settings;
}

// connect("host:port"), plain or over TLS (`tls` not null).
task<connection> connect_by_name(std::string_view host_and_port, const tls_context* tls,
                                 duration timeout, loop& l) {
    // An IP literal needs no resolver.
    std::optional<address> literal;
    try {
        literal = address::parse(host_and_port);
    } catch (const error&) {
    }
    if (literal && tls != nullptr) co_return co_await connect(*literal, *tls, timeout, {}, l);
    if (literal) co_return co_await connect(*literal, timeout, l);

    auto colon = host_and_port.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
        throw error(errc::invalid_address,
                    "connect \"" + std::string(host_and_port) + "\" (expected host:port)");
    }
    auto port_text = host_and_port.substr(colon + 1);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535 ||
        port_text.empty()) {
        throw error(errc::invalid_address,
                    "connect \"" + std::string(host_and_port) + "\" (port must be 0 to 65535)");
    }
    std::string host(host_and_port.substr(0, colon));
    std::shared_ptr<tls_state> settings;
    if (tls != nullptr) settings = client_settings(*tls, std::string(host_and_port));
    auto until = deadline_of(timeout);
    auto candidates = co_await resolve(host, static_cast<std::uint16_t>(port), timeout, l);
    std::optional<error> last;
    for (const auto& candidate : candidates) {
        std::optional<connection> conn;
        try {
            conn.emplace(co_await connect(candidate, remaining(until, timeout), l));
        } catch (const error& e) {
            if (e.kind() != errc::connect_failed) throw;
            last = e;
            continue;
        }
        if (settings) {
            co_await tls_handshake(connection_access::impl(*conn).shared_from_this(), settings,
                                   host, remaining(until, timeout));
        }
        co_return std::move(*conn);
    }
    throw *last;
}

}  // namespace
}  // namespace detail

task<connection> connect(const address& to, const tls_context& tls, duration timeout,
                         std::string server_name, loop& l) {
    auto settings = detail::client_settings(tls, to.to_string());
    auto until = detail::deadline_of(timeout);
    auto conn = co_await connect(to, timeout, l);
    if (server_name.empty() && !to.is_unix()) server_name = to.host();
    co_await detail::tls_handshake(detail::connection_access::impl(conn).shared_from_this(),
                                   settings, std::move(server_name),
                                   detail::remaining(until, timeout));
    co_return conn;
}

task<connection> connect(std::string_view host_and_port, duration timeout, loop& l) {
    return detail::connect_by_name(host_and_port, nullptr, timeout, l);
}

task<connection> connect(std::string_view host_and_port, const tls_context& tls, duration timeout,
                         loop& l) {
    return detail::connect_by_name(host_and_port, &tls, timeout, l);
}

bool connection::is_tls() const noexcept { return impl_ && impl_->is_tls(); }

std::string connection::tls_alpn() const {
#if NETLOOP_HAS_TLS
    if (!impl_ || !impl_->tls) return {};
    const unsigned char* name = nullptr;
    unsigned int length = 0;
    ::SSL_get0_alpn_selected(impl_->tls->native_handle(), &name, &length);
    return name == nullptr ? std::string()
                           : std::string(reinterpret_cast<const char*>(name), length);
#else
    return {};
#endif
}

}  // namespace netloop
