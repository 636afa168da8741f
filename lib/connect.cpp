// SPDX-License-Identifier: MIT
// The client side: connect to an address or a name (through the resolver), plain or TLS.
#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include <netloop/connection.hpp>

#include "connection_impl.hpp"
#include "logging.hpp"

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

task<std::vector<address>> resolve_name(std::string name, std::uint16_t port, duration timeout,
                                        loop& l) {
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
