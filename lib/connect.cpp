// SPDX-License-Identifier: MIT
// The client side: connect to an address or a name (through the resolver), plain or TLS.
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <netdb.h>
#include <netinet/in.h>
#include <optional>
#include <string>
#include <sys/eventfd.h>
#include <system_error>
#include <tuple>
#include <unistd.h>

#include <asio/posix/stream_descriptor.hpp>

#include <netloop/connection.hpp>

#include "connection_impl.hpp"
#include "logging.hpp"
#include "resolver.hpp"

namespace netloop {
namespace detail {
namespace {

// The coroutines below take their arguments by value: a task starts when it is awaited, and
// what a reference pointed to may be gone by then. The public functions copy into them.

task<connection> connect_to(address to, duration timeout, loop& l) {
    auto endpoint = generic_endpoint(to);
    stream_socket socket(l.context());
    asio::error_code ec;
    socket.open(endpoint.protocol(), ec);
    if (ec) throw error(errc::socket_creation_failed, "connect " + to.to_string(), ec.value());
    auto impl = std::make_shared<connection_impl>(l, std::move(socket), to);
    auto conn = connection_access::make(impl);  // closes the socket if the connect fails
    auto& s = impl->stream.socket();
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    {
        operation op(*impl, impl->writer, timeout, slot);
        auto [connect_ec] = co_await s.async_connect(endpoint, op.token());
        // A Unix listener with a full backlog makes the kernel answer EAGAIN at once (Asio
        // reports it as ENOBUFS) where TCP would retry its SYN: wait and retry, as TCP does,
        // within the call's timeout.
        auto pause = std::chrono::milliseconds(1);
        while (to.is_unix() && (connect_ec == asio::error::no_buffer_space ||
                                connect_ec == asio::error::try_again)) {
            asio::steady_timer backlog_full(l.context(), pause);
            auto [wait_ec] = co_await backlog_full.async_wait(op.token());
            if (wait_ec) {
                connect_ec = asio::error::operation_aborted;
                break;
            }
            pause = std::min(pause * 2, std::chrono::milliseconds(50));
            std::tie(connect_ec) = co_await s.async_connect(endpoint, op.token());
        }
        if (connect_ec == asio::error::operation_aborted) {
            throw error(impl->writer.expired ? errc::timeout : errc::cancelled,
                        "connect " + to.to_string());
        }
        if (connect_ec) {
            throw error(errc::connect_failed, "connect " + to.to_string(), connect_ec.value());
        }
    }
    log(spdlog::level::debug, "connected to {}", to.to_string());
    co_return std::move(conn);
}

// The caller's side of a lookup: the eventfd a resolver thread wakes it by, and the deadline.
// Owned by the call's frame alone; its destructor abandons the lookup before the eventfd closes.
struct lookup_wait {
    lookup_wait(asio::io_context& c, int wake, std::shared_ptr<lookup> j)
        : job(std::move(j)), limit(c), woken(c, wake) {}
    ~lookup_wait() { job->abandon(); }
    lookup_wait(const lookup_wait&) = delete;
    lookup_wait& operator=(const lookup_wait&) = delete;

    // `woken` last: once it is made it owns the eventfd, and nothing after it can throw.
    std::shared_ptr<lookup> job;
    asio::steady_timer limit;
    asio::posix::stream_descriptor woken;
    bool timed_out = false;
};

address to_address(const sockaddr_storage& s) {
    if (s.ss_family == AF_INET) {
        sockaddr_in in{};
        std::memcpy(&in, &s, sizeof in);
        asio::ip::address_v4::bytes_type bytes;
        std::memcpy(bytes.data(), &in.sin_addr, bytes.size());
        return address(asio::ip::tcp::endpoint(asio::ip::address_v4(bytes), ntohs(in.sin_port)));
    }
    sockaddr_in6 in6{};
    std::memcpy(&in6, &s, sizeof in6);
    asio::ip::address_v6::bytes_type bytes;
    std::memcpy(bytes.data(), &in6.sin6_addr, bytes.size());
    return address(asio::ip::tcp::endpoint(asio::ip::address_v6(bytes, in6.sin6_scope_id),
                                           ntohs(in6.sin6_port)));
}

// getaddrinfo runs on a resolver thread (resolver.cpp): it cannot be interrupted, and it blocks
// for as long as the name servers take. The call waits for its answer, its deadline or its
// cancellation, whichever comes first; an answer that comes later is dropped.
task<std::vector<address>> resolve_name(std::string name, std::uint16_t port, duration timeout,
                                        loop& l) {
    if (name.empty()) throw error(errc::resolve_failed, "resolve \"\" (empty name)");
    // An IP literal needs no resolver thread.
    asio::error_code literal_ec;
    auto literal = asio::ip::make_address(name, literal_ec);
    if (!literal_ec) {
        std::vector<address> one;
        one.emplace_back(asio::ip::tcp::endpoint(literal, port));
        co_return one;
    }
    int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) throw error(errc::resolve_failed, "resolve " + name + " (eventfd)", errno);
    std::shared_ptr<lookup_wait> w;
    try {
        auto job = std::make_shared<lookup>(name, std::to_string(port), wake);
        w = std::make_shared<lookup_wait>(l.context(), wake, std::move(job));
    } catch (...) {
        ::close(wake);
        throw;
    }
    try {
        start_lookup(w->job);
    } catch (const std::system_error& e) {
        throw error(errc::resolve_failed, "resolve " + name + " (no resolver thread)",
                    e.code().value());
    }
    // The handlers hold no reference: the slot's handler stays in the caller's cancellation
    // signal, which may outlive the io_context (a spawned task's does, when the loop is destroyed
    // with the call pending); the wait's I/O objects must go with this frame.
    std::weak_ptr<lookup_wait> weak = w;
    if (timeout != no_timeout) {
        w->limit.expires_after(timeout);
        w->limit.async_wait([weak](const asio::error_code& ec) {
            if (auto waiting = weak.lock(); waiting && !ec) {
                waiting->timed_out = true;
                asio::error_code ignored;
                waiting->woken.cancel(ignored);
            }
        });
    }
    auto state = co_await asio::this_coro::cancellation_state;
    auto slot = state.slot();
    if (slot.is_connected()) {
        slot.assign([weak](asio::cancellation_type) {
            if (auto waiting = weak.lock()) {
                asio::error_code ignored;
                waiting->woken.cancel(ignored);
            }
        });
    }
    auto [ec] = co_await w->woken.async_wait(
        asio::posix::stream_descriptor::wait_read,
        asio::bind_cancellation_slot(asio::cancellation_slot(), detail::use_tuple));
    if (slot.is_connected()) slot.clear();
    w->limit.cancel();
    if (ec == asio::error::operation_aborted) {
        throw error(w->timed_out ? errc::timeout : errc::cancelled, "resolve " + name);
    }
    if (ec) throw error(errc::resolve_failed, "resolve " + name, ec.value());
    int status = 0;
    int sys_errno = 0;
    std::vector<sockaddr_storage> found;
    {
        std::lock_guard lock(w->job->mutex);
        status = w->job->status;
        sys_errno = w->job->sys_errno;
        found = std::move(w->job->found);
    }
    if (status != 0) {
        throw error(errc::resolve_failed,
                    "resolve " + name + " (" +
                        (status == EAI_SYSTEM ? std::strerror(sys_errno) : ::gai_strerror(status)) +
                        ")",
                    sys_errno);
    }
    std::vector<address> out;
    out.reserve(found.size());
    for (const auto& one : found) out.push_back(to_address(one));
    if (out.empty()) throw error(errc::resolve_failed, "resolve " + name + " (no addresses)");
    co_return out;
}

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

// What is left of `until` for the next step of a longer call.
duration left(clock::time_point until) {
    if (until == never) return no_timeout;
    return std::max(duration::zero(), until - clock::now());
}

task<connection> connect_tls(address to, tls_context tls, duration timeout, std::string server_name,
                             loop& l) {
    auto settings = client_settings(tls, to.to_string());
    auto until = deadline_after(clock::now(), timeout);
    auto conn = co_await connect_to(to, timeout, l);
    if (server_name.empty() && !to.is_unix()) server_name = to.host();
    co_await tls_handshake(connection_access::impl(conn).shared_from_this(), std::move(settings),
                           std::move(server_name), left(until));
    co_return conn;
}

// connect("host:port"), plain or over TLS.
task<connection> connect_by_name(std::string host_and_port, std::optional<tls_context> tls,
                                 duration timeout, loop& l) {
    std::shared_ptr<tls_state> settings;
    if (tls) settings = client_settings(*tls, host_and_port);
    // An IP literal needs no resolver.
    std::optional<address> literal;
    try {
        literal = address::parse(host_and_port);
    } catch (const error&) {
    }
    if (literal && tls) co_return co_await connect_tls(*literal, *tls, timeout, {}, l);
    if (literal) co_return co_await connect_to(*literal, timeout, l);

    auto colon = host_and_port.rfind(':');
    if (colon == std::string::npos || colon == 0) {
        throw error(errc::invalid_address,
                    "connect \"" + host_and_port + "\" (expected host:port)");
    }
    std::string_view port_text(host_and_port);
    port_text.remove_prefix(colon + 1);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535 ||
        port_text.empty()) {
        throw error(errc::invalid_address,
                    "connect \"" + host_and_port + "\" (port must be 0 to 65535)");
    }
    std::string host = host_and_port.substr(0, colon);
    auto until = deadline_after(clock::now(), timeout);
    auto candidates = co_await resolve_name(host, static_cast<std::uint16_t>(port), timeout, l);
    std::optional<error> last;
    for (const auto& candidate : candidates) {
        std::optional<connection> conn;
        try {
            conn.emplace(co_await connect_to(candidate, left(until), l));
        } catch (const error& e) {
            if (e.kind() != errc::connect_failed) throw;
            last = e;
            continue;
        }
        if (settings) {
            co_await tls_handshake(connection_access::impl(*conn).shared_from_this(), settings,
                                   host, left(until));
        }
        co_return std::move(*conn);
    }
    throw *last;
}

}  // namespace
}  // namespace detail

task<connection> connect(const address& to, duration timeout, loop& l) {
    return detail::connect_to(to, timeout, l);
}

task<std::vector<address>> resolve(std::string_view host, std::uint16_t port, duration timeout,
                                   loop& l) {
    return detail::resolve_name(std::string(host), port, timeout, l);
}

task<connection> connect(const address& to, const tls_context& tls, duration timeout,
                         std::string server_name, loop& l) {
    return detail::connect_tls(to, tls, timeout, std::move(server_name), l);
}

task<connection> connect(std::string_view host_and_port, duration timeout, loop& l) {
    return detail::connect_by_name(std::string(host_and_port), std::nullopt, timeout, l);
}

task<connection> connect(std::string_view host_and_port, const tls_context& tls, duration timeout,
                         loop& l) {
    return detail::connect_by_name(std::string(host_and_port), tls, timeout, l);
}

}  // namespace netloop
