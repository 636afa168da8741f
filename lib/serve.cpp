// SPDX-License-Identifier: MIT
// server::serve: the accept loop with limits, a tracked task per connection, and the drain.
#include <unordered_map>

#include <asio/post.hpp>

#include <netloop/error.hpp>
#include <netloop/server.hpp>

#include "connection_impl.hpp"
#include "logging.hpp"
#include "server_state.hpp"
#include "task_registry.hpp"

namespace netloop {
namespace detail {
namespace {

using clock = std::chrono::steady_clock;

// Shared by serve() and the handler tasks, which may outlive serve() after a forced drain.
struct serve_state {
    serve_state(loop& l, connection_handler h, const serve_options& o)
        : owner(l), handler(std::move(h)), options(o), wake(l.context()) {}

    loop& owner;
    connection_handler handler;
    serve_options options;
    task_registry handlers;  // one cancellation signal per running handler
    std::size_t running = 0;
    std::unordered_map<asio::ip::address, std::size_t> per_ip;
    // Cancelled whenever a handler ends, the server closes, or a forced drain is asked for:
    // whoever waits on it re-checks its condition.
    asio::steady_timer wake;

    void notify() noexcept { wake.cancel(); }
};

// Waits on `s.wake` until it is notified or `until` passes; true if notified. Bound to an
// unconnected cancellation slot: serve() handles its own cancellation (see drain()).
task<bool> wait_for_wake(serve_state& s, clock::time_point until) {
    s.wake.expires_at(until);
    auto [ec] = co_await s.wake.async_wait(
        asio::bind_cancellation_slot(asio::cancellation_slot(), use_tuple));
    co_return ec == asio::error::operation_aborted;
}

// While alive, cancelling the awaiting coroutine sets `fired` and wakes `s.wake` (whose wait is
// bound to no slot, so this handler stays installed across it).
class cancel_forwarder {
public:
    cancel_forwarder(asio::cancellation_slot slot, serve_state& s) : slot_(slot) {
        if (slot_.is_connected()) {
            slot_.assign([this, &s](asio::cancellation_type) {
                fired = true;
                s.notify();
            });
        }
    }
    ~cancel_forwarder() {
        if (slot_.is_connected()) slot_.clear();
    }
    cancel_forwarder(const cancel_forwarder&) = delete;
    cancel_forwarder& operator=(const cancel_forwarder&) = delete;

    bool fired = false;

private:
    asio::cancellation_slot slot_;
};

task<> run_handler(std::shared_ptr<serve_state> s, connection conn, asio::ip::address ip) {
    auto remote = conn.remote_address().to_string();
    try {
        co_await s->handler(std::move(conn));
    } catch (...) {
        log_escaped(std::current_exception(), "handler for", remote);
    }
    --s->running;
    if (auto it = s->per_ip.find(ip); it != s->per_ip.end() && --it->second == 0) {
        s->per_ip.erase(it);
    }
    s->notify();
}

void start_handler(const std::shared_ptr<serve_state>& s, connection conn) {
    auto& impl = connection_access::impl(conn);
    impl.linger_timeout = s->options.linger_timeout;
    impl.set_limits(s->options.idle_timeout, s->options.connection_deadline);
    auto ip = impl.remote.endpoint().address();
    ++s->running;
    ++s->per_ip[ip];
    auto* entry = s->handlers.add();
    asio::co_spawn(
        s->owner.context(), run_handler(s, std::move(conn), ip),
        asio::bind_cancellation_slot(entry->signal.slot(), [s, entry](std::exception_ptr) {
            // As in spawn(): free the entry from a fresh handler.
            s->handlers.remove(entry);
            asio::post(s->owner.context(), [owned = s->handlers.release(entry)] {});
        }));
}

// After the accept loop: refuse new connections, wait for the handlers up to drain_timeout (or
// until a cancellation says "force now"), cancel the rest, wait for them to end.
task<> drain(std::shared_ptr<serve_state> s, server_state& server) {
    server.close();
    if (s->running == 0) co_return;
    log(spdlog::level::info, "server {}: draining {} connection(s)", server.local.to_string(),
        s->running);
    auto state = co_await asio::this_coro::cancellation_state;
    cancel_forwarder force(state.slot(), *s);
    auto drain_until =
        clock::now() + std::min(s->options.drain_timeout,
                                std::chrono::duration_cast<duration>(std::chrono::hours(24 * 365)));
    while (s->running > 0 && !force.fired && clock::now() < drain_until) {
        (void)co_await wait_for_wake(*s, drain_until);
    }
    if (s->running > 0) {
        log(spdlog::level::warn, "server {}: {} cancelling {} connection(s)",
            server.local.to_string(), force.fired ? "forced," : "drain timeout,", s->running);
        s->handlers.cancel_all();
        // Cancelled handlers end promptly; a handler that ignores cancellation is left to
        // finish on its own after a last second, detached (it holds what it uses).
        auto last = clock::now() + std::chrono::seconds(1);
        while (s->running > 0 && clock::now() < last) (void)co_await wait_for_wake(*s, last);
    }
}

}  // namespace
}  // namespace detail

task<> server::serve(connection_handler handler, serve_options options) {
    // serve() goes on after a cancellation (it drains), so it must not have its own co_awaits
    // throw for it; the caller's setting comes back on return.
    bool throw_if_cancelled = co_await asio::this_coro::throw_if_cancelled();
    co_await asio::this_coro::throw_if_cancelled(false);
    auto server_state = state_;
    auto s =
        std::make_shared<detail::serve_state>(server_state->owner, std::move(handler), options);
    auto& counters = *server_state->counters;
    auto conns = connections();
    auto wake_entry =
        server_state->wake_on_close.insert(server_state->wake_on_close.end(), &s->wake);
    std::exception_ptr failure;
    try {
        for (;;) {
            bool cancelled = false;
            while (options.on_limit == limit_policy::pause &&
                   s->running >= options.max_connections && !server_state->closed) {
                auto state = co_await asio::this_coro::cancellation_state;
                detail::cancel_forwarder on_cancel(state.slot(), *s);
                (void)co_await detail::wait_for_wake(*s, detail::clock::time_point::max());
                cancelled = on_cancel.fired;
                if (cancelled) break;
            }
            if (cancelled) break;
            auto conn = co_await conns.next();
            if (!conn) break;
            auto ip = conn->remote_address().endpoint().address();
            auto same_ip = s->per_ip.find(ip);
            bool over_ip = options.max_connections_per_ip != unlimited &&
                           same_ip != s->per_ip.end() &&
                           same_ip->second >= options.max_connections_per_ip;
            bool over_total = s->running >= options.max_connections;
            if (over_ip || over_total) {
                detail::server_counters::add(counters.rejected, 1);
                detail::log(
                    spdlog::level::info, "rejected {}: {}", conn->remote_address().to_string(),
                    over_ip ? "too many connections from this address" : "max_connections reached");
                conn->close();
                continue;
            }
            detail::start_handler(s, std::move(*conn));
        }
    } catch (...) {
        failure = std::current_exception();
    }
    co_await detail::drain(s, *server_state);
    server_state->wake_on_close.erase(wake_entry);
    co_await asio::this_coro::throw_if_cancelled(throw_if_cancelled);
    if (failure) std::rethrow_exception(failure);
}

}  // namespace netloop
