// SPDX-License-Identifier: MIT
// server: listening sockets, close() from any thread, stats(), announce() (accepting: accept.cpp).
#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>

#include <netloop/error.hpp>
#include <netloop/server.hpp>

#include "logging.hpp"
#include "loop_access.hpp"
#include "server_state.hpp"

namespace netloop {
namespace detail {
namespace {

// The stale-file policy of a Unix socket path: a socket file that nothing listens on (left by a
// crashed run) is removed; a live one, or a file that is not a socket, is never touched.
void clear_stale_socket_file(const address& at) {
    const auto& path = at.path();
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;  // nothing there; bind() reports the rest
    if (!S_ISSOCK(st.st_mode)) {
        throw error(errc::bind_failed, "listen " + at.to_string() + " (exists, not a socket)",
                    EADDRINUSE);
    }
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
#else
    int probe = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (probe >= 0) {
        ::fcntl(probe, F_SETFD, FD_CLOEXEC);
        ::fcntl(probe, F_SETFL, O_NONBLOCK);
    }
#endif
    if (probe < 0) throw error(errc::socket_creation_failed, "probe " + at.to_string(), errno);
    auto endpoint = generic_endpoint(at);
    int rc = ::connect(probe, endpoint.data(), static_cast<socklen_t>(endpoint.size()));
    int err = rc == 0 ? 0 : errno;
    ::close(probe);
    if (rc == 0 || err == EAGAIN) {  // accepted, or queued behind a full backlog: alive
        throw error(errc::bind_failed, "listen " + at.to_string() + " (a server listens there)",
                    EADDRINUSE);
    }
    if (err != ECONNREFUSED) return;  // bind() reports what is wrong
    if (::unlink(path.c_str()) == 0) {
        log(spdlog::level::info, "removed stale socket file {}", path);
    }
}

}  // namespace

std::shared_ptr<tls_state> server_tls(const tls_context& tls, const address& at) {
    const auto& settings = tls_access::state(tls);
    if (!settings) return nullptr;
#if NETLOOP_HAS_TLS
    if (!settings->server_side) {
        throw error(errc::invalid_argument,
                    "listen " + at.to_string() + " (needs a tls_context::server())");
    }
#else
    (void)at;
#endif
    return settings;
}

std::shared_ptr<server_state> open_listener(const address& at, const listen_options& options,
                                            loop& l) {
    if (options.backlog < 0) {
        throw error(errc::invalid_argument, "listen " + at.to_string() + " (negative backlog)");
    }
    if (at.is_unix() && options.reuse_port) {
        throw error(errc::invalid_argument, "listen " + at.to_string() + " (reuse_port is TCP's)");
    }
    if (options.max_preparing == 0) {
        throw error(errc::invalid_argument, "listen " + at.to_string() + " (max_preparing 0)");
    }
    auto tls = server_tls(options.tls, at);
    auto endpoint = generic_endpoint(at);
    stream_acceptor acceptor(l.context());
    asio::error_code ec;
    acceptor.open(endpoint.protocol(), ec);
    if (ec) throw error(errc::socket_creation_failed, "socket " + at.to_string(), ec.value());
    if (at.is_v6()) acceptor.set_option(asio::ip::v6_only(options.v6_only), ec);
    if (!at.is_unix()) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (options.reuse_port) {
        int on = 1;
        if (::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) {
            throw error(errc::socket_creation_failed, "SO_REUSEPORT " + at.to_string(), errno);
        }
    }
    acceptor.non_blocking(true, ec);
    bool file = at.is_unix() && at.path().front() != '@';
    if (file) clear_stale_socket_file(at);
    acceptor.bind(endpoint, ec);
    if (ec) throw error(errc::bind_failed, "bind " + at.to_string(), ec.value());
    // From here on the file is ours: remove it if listening fails.
    auto remove_on_failure = [&] {
        if (file) ::unlink(at.path().c_str());
    };
    if (file && options.file_mode >= 0 &&
        ::chmod(at.path().c_str(), static_cast<mode_t>(options.file_mode)) != 0) {
        int err = errno;
        remove_on_failure();
        throw error(errc::option_failed, "chmod " + at.to_string(), err);
    }
    acceptor.listen(options.backlog, ec);
    if (ec) {
        remove_on_failure();
        throw error(errc::listen_failed, "listen " + at.to_string(), ec.value());
    }
    auto state = std::make_shared<server_state>(l, std::move(acceptor));
    state->backlog = options.backlog;
    state->reuse_port = options.reuse_port;
    state->v6_only = options.v6_only;
    state->tls = std::move(tls);
    state->handshake_timeout = options.handshake_timeout;
    state->proxy = {options.proxy_protocol, options.proxy_from, options.proxy_header_timeout};
    state->max_preparing = options.max_preparing;
    if (file) state->own_socket_file(at.path());
    return state;
}

server_state::server_state(loop& l, stream_acceptor a)
    : owner(l), acceptor(std::move(a)), listen_fd(acceptor.native_handle()) {
    asio::error_code ec;
    local = from_generic(acceptor.local_endpoint(ec));
}

void server_state::own_socket_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return;
    socket_file_ = path;
    socket_file_id_ = {st.st_dev, st.st_ino};
    remove_socket_file_ = true;
}

void server_state::remove_socket_file() noexcept {
    if (!remove_socket_file_.exchange(false)) return;
    // Only the file this server bound: a successor may have bound a new one at the path.
    struct stat st {};
    if (::lstat(socket_file_.c_str(), &st) == 0 && st.st_dev == socket_file_id_.first &&
        st.st_ino == socket_file_id_.second) {
        ::unlink(socket_file_.c_str());
    }
}

void server_state::close() noexcept {
    // From another thread, what this call does (the shutdown below) can end the loop's serve()
    // or next() at once, and the task that owned the server then destroys it: hold this state
    // until the call returns.
    auto keep_alive = weak_from_this().lock();
    if (closed.exchange(true)) return;
    remove_socket_file();
    {
        std::lock_guard lock(linked_mutex_);
        for (auto& other : linked_) other->close();
    }
    // On the loop's thread, or while no thread runs the loop (held off until we are done),
    // closing here is safe and frees the port at once; otherwise the loop does it. Asking
    // whether the loop runs and then acting, without that hold, would race with a thread that
    // starts running it in between.
    if (owner.executor().running_in_this_thread()) {
        close_here();
        return;
    }
    if (loop_access::if_not_running(owner, [this] { close_here(); })) return;
    // Linux takes a listening socket out of LISTEN on shutdown(SHUT_RD): a connect from now on
    // is refused, even before the loop runs the posted close. Elsewhere this fails harmlessly
    // and the posted close alone ends the listening.
    ::shutdown(listen_fd, SHUT_RD);
    try {
        asio::post(owner.context(), [self = shared_from_this()] { self->close_here(); });
    } catch (...) {
        // post() only fails when allocation fails; the acceptor then closes with the server.
    }
}

void server_state::end_preparing() noexcept {
    preparing.fetch_sub(1, std::memory_order_relaxed);
    auto wake = [](server_state& s) noexcept {
        for (auto* timer : s.wake_on_prepared) timer->cancel();
    };
    if (owner.executor().running_in_this_thread()) {
        wake(*this);
        return;
    }
    // A hand_off serve() prepares on other loops: the waiters belong to this one.
    if (loop_access::if_not_running(owner, [&] { wake(*this); })) return;
    try {
        asio::post(owner.context(), [self = shared_from_this(), wake] { wake(*self); });
    } catch (...) {
        // No memory to post: a paused accept resumes at the next preparation that ends.
    }
}

void server_state::link(std::shared_ptr<server_state> other) {
    std::lock_guard lock(linked_mutex_);
    linked_.push_back(std::move(other));
}

void server_state::add_counters(std::shared_ptr<server_counters> c) {
    // Before the extra loop opens any connection: its opens and closes count in the server's
    // totals, whose peak is the true one across loops.
    c->totals = counters->totals;
    std::lock_guard lock(linked_mutex_);
    extra_counters_.push_back(std::move(c));
}

std::vector<std::shared_ptr<server_counters>> server_state::all_counters() const {
    std::lock_guard lock(linked_mutex_);
    auto all = extra_counters_;
    all.push_back(counters);
    return all;
}

void server_state::close_here() noexcept {
    asio::error_code ignored;
    acceptor.close(ignored);
    for (auto* timer : wake_on_close) timer->cancel();
    close_prepared(*this);
    log(spdlog::level::debug, "server {} closed", local.to_string());
}

}  // namespace detail

server::server(std::shared_ptr<detail::server_state> state) noexcept : state_(std::move(state)) {}

server::server(server&&) noexcept = default;

server& server::operator=(server&& other) noexcept {
    if (this != &other) {
        close();
        state_ = std::move(other.state_);
    }
    return *this;
}

server::~server() { close(); }

server server::listen(std::uint16_t port, int backlog, loop& l) {
    try {
        return server(detail::open_listener(address::ipv6("::", port),
                                            {.backlog = backlog, .v6_only = false}, l));
    } catch (const error& e) {
        if (e.kind() != errc::socket_creation_failed || e.sys_errno() != EAFNOSUPPORT) throw;
    }
    return server(detail::open_listener(address::ipv4("0.0.0.0", port), {.backlog = backlog}, l));
}

server server::listen(const address& at, int backlog, loop& l) {
    return server(detail::open_listener(at, {.backlog = backlog}, l));
}

server server::listen(const address& at, const listen_options& options, loop& l) {
    return server(detail::open_listener(at, options, l));
}

std::uint16_t server::local_port() const noexcept { return state_->local.port(); }

const address& server::local_address() const noexcept { return state_->local; }

connection_stream server::connections() const { return connection_stream(state_); }

void server::close() noexcept {
    if (state_) state_->close();
}

bool server::is_open() const noexcept { return state_ && !state_->closed; }

void server::set_tls(const tls_context& tls) {
    auto& state = *state_;
    if (!state.tls) {
        throw error(errc::invalid_argument,
                    "set_tls " + state.local.to_string() + " (the server was made without TLS)");
    }
    auto settings = detail::server_tls(tls, state.local);
    if (!settings) {
        throw error(errc::invalid_argument,
                    "set_tls " + state.local.to_string() + " (empty tls_context)");
    }
    state.tls.store(std::move(settings));
}

server_stats server::stats() const noexcept {
    using detail::server_counters;
    server_stats total;
    try {
        for (const auto& c : state_->all_counters()) {
            total.accepted += server_counters::get(c->accepted);
            total.rejected += server_counters::get(c->rejected);
            total.active += server_counters::get(c->active);
            total.bytes_read += server_counters::get(c->bytes_read);
            total.bytes_written += server_counters::get(c->bytes_written);
            total.accept_errors += server_counters::get(c->accept_errors);
            total.handshake_failures += server_counters::get(c->handshake_failures);
            total.proxy_failures += server_counters::get(c->proxy_failures);
        }
    } catch (...) {
        // all_counters() copies a few pointers; without memory there is nothing to add up.
    }
    total.peak_active = state_->counters->totals->peak_active.load(std::memory_order_relaxed);
    return total;
}

int server::native_handle() const noexcept {
    return state_->acceptor.is_open() ? state_->acceptor.native_handle() : -1;
}

loop& server::owner() const noexcept { return state_->owner; }

void announce(const server& s) {
    std::printf("listening on %s\n", s.local_address().to_string().c_str());
    std::fflush(stdout);
}

}  // namespace netloop
