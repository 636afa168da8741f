// SPDX-License-Identifier: MIT
// server::serve: the accept loop with limits, a tracked task per connection, the drain, and
// the optional extra loops (threads) that share the work.
#include <list>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <tuple>
#include <unordered_map>

#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>

#include <netloop/error.hpp>
#include <netloop/server.hpp>

#include "connection_impl.hpp"
#include "logging.hpp"
#include "loop_access.hpp"
#include "server_state.hpp"
#include "task_registry.hpp"

namespace netloop {
namespace detail {
namespace {

using clock = std::chrono::steady_clock;

// The limits are global across loops: one lock per connection admitted or ended, never per
// byte.
class admission {
public:
    enum verdict { admitted, over_total, over_ip };

    // Counts a connection in the total and, if `ip` is given, in its address's count.
    verdict try_admit(const std::optional<asio::ip::address>& ip, const serve_options& o) {
        std::lock_guard lock(mutex_);
        if (running_ >= o.max_connections) return over_total;
        if (ip && !admit_ip(*ip, o)) return over_ip;
        ++running_;
        return admitted;
    }

    // Counts a connection already in the total in `ip`'s count (once its PROXY header told the
    // client's address).
    verdict try_admit_ip(const asio::ip::address& ip, const serve_options& o) {
        std::lock_guard lock(mutex_);
        return admit_ip(ip, o) ? admitted : over_ip;
    }

    void release(const std::optional<asio::ip::address>& ip) {
        std::lock_guard lock(mutex_);
        --running_;
        if (!ip) return;
        if (auto it = per_ip_.find(*ip); it != per_ip_.end() && --it->second == 0) {
            per_ip_.erase(it);
        }
    }

    [[nodiscard]] std::size_t running() {
        std::lock_guard lock(mutex_);
        return running_;
    }

private:
    bool admit_ip(const asio::ip::address& ip, const serve_options& o) {
        auto& from_ip = per_ip_[ip];
        if (from_ip >= o.max_connections_per_ip) {
            if (from_ip == 0) per_ip_.erase(ip);
            return false;
        }
        ++from_ip;
        return true;
    }

    std::mutex mutex_;
    std::size_t running_ = 0;
    std::unordered_map<asio::ip::address, std::size_t> per_ip_;
};

struct loop_share;

// What every loop of one serve() shares. Fixed before the extra loops start, except what the
// admission lock guards.
struct serve_common {
    serve_common(connection_handler h, const serve_options& o)
        : handler(std::move(h)), options(o) {}

    connection_handler handler;
    serve_options options;
    tls_slot tls;  // the listener's: each connection handshakes first
    duration handshake_timeout{};
    proxy_settings proxy;  // the listener's: each connection's PROXY header comes first
    admission limits;
    std::weak_ptr<loop_share> main;  // weak: the main share owns this, not the other way
    clock::time_point drain_until = clock::time_point::max();  // set before stop is posted
};

// One loop's part of a serve(): its handlers and its wake-up timer. Touched only on its loop.
struct loop_share {
    loop_share(loop& l, std::shared_ptr<serve_common> c, std::shared_ptr<server_counters> k)
        : owner(l), common(std::move(c)), counters(std::move(k)), wake(l.context()) {}

    loop& owner;
    std::shared_ptr<serve_common> common;
    std::shared_ptr<server_counters> counters;
    task_registry handlers;  // one cancellation signal per running handler
    std::list<std::shared_ptr<connection_impl>> live;  // their connections, for the drain
    std::size_t running = 0;
    std::size_t workers_left = 0;  // main loop only: extra loops that have not drained
    std::size_t threads_left = 0;  // main loop only: extra threads still running their loop
    bool stop = false;             // extra loops: the main loop asked for the drain
    bool force = false;            // cancel the handlers now
    // Cancelled whenever something a waiter may be waiting for changes; waiters re-check.
    asio::steady_timer wake;

    void notify() noexcept { wake.cancel(); }
};

// While alive, cancelling the awaiting coroutine sets `fired` and wakes the share.
//
// Asio 1.22's use_awaitable clears the coroutine's cancellation slot whenever an operation it
// awaited completes (asio/impl/use_awaitable.hpp), which would silently drop this handler after
// the first wait: wait_for_wake() puts it back before the coroutine can suspend again, so a
// cancellation that arrives at any later point still reaches it.
class cancel_forwarder {
public:
    cancel_forwarder(asio::cancellation_slot slot, loop_share& s) : slot_(slot), share_(s) {
        rearm();
    }
    ~cancel_forwarder() {
        if (slot_.is_connected()) slot_.clear();
    }
    cancel_forwarder(const cancel_forwarder&) = delete;
    cancel_forwarder& operator=(const cancel_forwarder&) = delete;

    void rearm() {
        if (!slot_.is_connected() || slot_.has_handler()) return;
        slot_.assign([this](asio::cancellation_type) {
            fired = true;
            share_.notify();
        });
    }

    bool fired = false;

private:
    asio::cancellation_slot slot_;
    loop_share& share_;
};

// Waits on `wake` until notified or `until` passes. Bound to an unconnected cancellation
// slot: serve() handles its own cancellation through `forwarder`, re-armed after the wait.
task<> wait_for_wake(loop_share& s, clock::time_point until,
                     cancel_forwarder* forwarder = nullptr) {
    s.wake.expires_at(until);
    auto [ec] = co_await s.wake.async_wait(
        asio::bind_cancellation_slot(asio::cancellation_slot(), use_tuple));
    (void)ec;
    if (forwarder != nullptr) forwarder->rearm();
}

void log_rejected(const address& remote, admission::verdict verdict) {
    log(spdlog::level::info, "rejected {}: {}", remote.to_string(),
        verdict == admission::over_ip ? "too many connections from this address"
                                      : "max_connections reached");
}

// A connection's task: its preparation (PROXY header, TLS handshake; `slot` holds its place in
// the listener's max_preparing until then), then — behind a PROXY header, once the client's
// address is known — its per-IP admission, then the handler. `ip` is the address already
// counted per IP (none when the header is still to tell it, or when no per-IP limit is set).
task<> run_handler(std::shared_ptr<loop_share> s, connection conn,
                   std::optional<asio::ip::address> ip, preparing_slot slot) {
    auto& impl = connection_access::impl(conn);
    std::optional<std::list<std::shared_ptr<connection_impl>>::iterator> entry;
    try {
        entry = s->live.insert(s->live.end(), impl.shared_from_this());
        const auto& common = *s->common;
        auto tls = common.tls.load();  // once per handshake: server::set_tls may replace it
        bool ready = (!tls && common.proxy.mode == proxy_protocol::off) ||
                     co_await prepare_or_count(impl.shared_from_this(), common.proxy, tls,
                                               common.handshake_timeout, *s->counters);
        slot.release();
        if (ready && !ip && common.options.max_connections_per_ip != unlimited) {
            auto client = impl.remote.endpoint().address();
            if (s->common->limits.try_admit_ip(client, common.options) == admission::admitted) {
                ip = client;
            } else {
                server_counters::add(s->counters->rejected, 1);
                log_rejected(impl.remote, admission::over_ip);
                impl.cut();  // nothing of the client's was read: no linger
                ready = false;
            }
        }
        if (ready) co_await s->common->handler(std::move(conn));
    } catch (...) {
        // impl outlives the handler (`live` holds it): its address is the one after a PROXY
        // header. Made only for a log that prints: most handlers end here, by EOF.
        if (log_enabled(spdlog::level::err)) {
            log_escaped(std::current_exception(), "handler for", impl.remote.to_string());
        }
    }
    if (entry) s->live.erase(*entry);
    s->common->limits.release(ip);
    --s->running;
    s->notify();
    // A serve() paused at max_connections waits on the main loop.
    if (auto main = s->common->main.lock(); main && main != s) {
        main->owner.post([main] { main->notify(); });
    }
}

// On `s`'s loop: wraps an accepted socket, and starts its handler or turns it away. Behind a
// PROXY header the per-IP limit waits for the header (run_handler); the total counts at once.
// Out of memory, the connection is dropped (closed) and logged; the server goes on.
void deliver(const std::shared_ptr<loop_share>& s, accepted a, preparing_slot slot,
             const server_state& listener) noexcept {
    std::optional<asio::ip::address> ip;
    bool admitted = false;
    try {
        auto impl = make_connection(s->owner, std::move(a), s->counters);
        auto conn = connection_access::make(impl);
        auto& options = s->common->options;
        // Counted per IP only under a limit: no map entry per connection otherwise.
        if (s->common->proxy.mode == proxy_protocol::off &&
            options.max_connections_per_ip != unlimited) {
            ip = impl->remote.endpoint().address();
        }
        auto verdict = s->common->limits.try_admit(ip, options);
        if (verdict != admission::admitted) {
            server_counters::add(s->counters->rejected, 1);
            log_rejected(impl->remote, verdict);
            // Closed at once, no linger: nothing was read or written, so there is nothing to
            // protect, and the fd is not held through a connect flood. The client reads EOF.
            impl->cut();
            return;
        }
        admitted = true;
        impl->linger_timeout = options.linger_timeout;
        impl->fresh = true;
        impl->set_limits(options.idle_timeout, options.connection_deadline);
        ++s->running;
        // The exit handler holds the share: the registry it unlinks from lives there. Out of
        // memory, spawn_tracked throws before the handler started.
        spawn_tracked(s->owner.context(), s->handlers,
                      run_handler(s, std::move(conn), ip, std::move(slot)),
                      [s](std::exception_ptr) {});
    } catch (const std::exception& e) {
        if (admitted) {
            --s->running;
            s->common->limits.release(ip);
        }
        log_dropped(listener, e);
    }
}

// Accepts on `listener` until it closes or the task is cancelled, handing each connection to
// the next of `targets` in turn (only `self` unless this loop hands off to others).
task<> accept_loop(std::shared_ptr<loop_share> self, std::shared_ptr<server_state> listener,
                   std::vector<std::shared_ptr<loop_share>> targets) {
    auto& options = self->common->options;
    // The preparations count against this listener's max_preparing, wherever they run.
    const bool prepares = self->common->tls || self->common->proxy.mode != proxy_protocol::off;
    std::size_t next = 0;
    for (;;) {
        bool cancelled = false;
        while (((options.on_limit == limit_policy::pause &&
                 self->common->limits.running() >= options.max_connections) ||
                (prepares && at_preparing_bound(*listener))) &&
               !listener->closed) {
            auto state = co_await asio::this_coro::cancellation_state;
            cancel_forwarder on_cancel(state.slot(), *self);
            listed_timer on_close(listener->wake_on_close, self->wake);
            listed_timer on_prepared(listener->wake_on_prepared, self->wake);
            co_await wait_for_wake(*self, clock::time_point::max(), &on_cancel);
            cancelled = on_cancel.fired;
            if (cancelled) break;
        }
        if (cancelled) break;
        auto& target = targets[next];
        next = (next + 1) % targets.size();
        std::optional<accepted> a;
        bool out_of_memory = false;
        try {
            a = co_await accept_next(listener, target->owner.context());
        } catch (const std::bad_alloc& e) {
            log_dropped(*listener, e);
            out_of_memory = true;
        }
        if (out_of_memory) {
            // Pause briefly rather than spin while memory is short (without memory for the
            // timer either, go on at once). Cancelled meanwhile: the loop ends, as accept_next's.
            asio::error_code ec;
            try {
                asio::steady_timer timer(self->owner.context(), std::chrono::milliseconds(5));
                std::tie(ec) = co_await timer.async_wait(use_tuple);
            } catch (const std::bad_alloc&) {
            }
            if (ec) break;
            continue;
        }
        if (!a) break;
        auto slot = prepares ? preparing_slot(listener) : preparing_slot();
        if (target == self) {
            deliver(self, std::move(*a), std::move(slot), *listener);
            continue;
        }
        try {
            target->owner.post(
                [target, listener, a = std::move(*a), slot = std::move(slot)]() mutable {
                    deliver(target, std::move(a), std::move(slot), *listener);
                });
        } catch (const std::bad_alloc& e) {
            log_dropped(*listener, e);  // the socket closed with the handler that was not posted
        }
    }
}

// Lets this loop's handlers finish until the drain deadline (or a forced drain), then cancels
// the rest and waits a last second for them. With `close_idle_on_drain` it ends at once the
// reads that wait at a message boundary (connection_impl::end_if_idle), and from then on every
// read that would wait at one ends instead (connection_impl::drain_ends_read): a handler inside a
// message finishes it first. Handlers that mark no boundaries (raw reads) are looked at every
// `drain_idle_grace`, and ended once a read waited a whole interval (connection_impl::drain_look).
task<> drain_share(std::shared_ptr<loop_share> s, cancel_forwarder* forwarder) {
    const auto& options = s->common->options;
    auto& counters = *s->counters;
    counters.draining.store(true, std::memory_order_relaxed);
    if (options.close_idle_on_drain) counters.ending_idle.store(true, std::memory_order_relaxed);
    auto forced = [&] { return s->force || (forwarder != nullptr && forwarder->fired); };
    auto next_look = options.close_idle_on_drain ? clock::now() : never;
    while (s->running > 0 && !forced() && clock::now() < s->common->drain_until) {
        if (clock::now() >= next_look) {
            std::size_t ended = 0;
            for (auto& c : s->live) ended += c->drain_look() ? 1 : 0;
            if (ended > 0) log(spdlog::level::debug, "drain: ended {} idle connection(s)", ended);
            next_look = deadline_after(clock::now(), options.drain_idle_grace);
        }
        co_await wait_for_wake(*s, std::min(s->common->drain_until, next_look), forwarder);
    }
    if (s->running == 0) co_return;
    bool cut = forced();
    log(spdlog::level::warn, "{}: cancelling {} connection(s)",
        cut ? "forced drain" : "drain timeout", s->running);
    // A forced stop cuts: what these handlers wrote still goes out, but nothing waits for their
    // peers, so the exit is immediate. At the drain's deadline the connections still close
    // gracefully (bounded by linger_timeout): a peer that is still sending would otherwise
    // reset the connection and lose what the handler wrote.
    if (cut) counters.cutting.store(true, std::memory_order_relaxed);
    s->handlers.cancel_all();
    // Cancelled handlers end promptly; one that ignores cancellation is left to finish on its
    // own after a last second, detached (it holds what it uses).
    auto last = clock::now() + std::chrono::seconds(1);
    while (s->running > 0 && clock::now() < last) co_await wait_for_wake(*s, last, forwarder);
}

// An extra loop of a multi-core serve(), with its thread.
struct worker {
    std::unique_ptr<loop> owned = loop_access::make_shared_reactor();
    loop& l = *owned;
    std::shared_ptr<loop_share> share;
    std::shared_ptr<server_state> listener;  // reuse_port only
    std::thread thread;
};

task<> worker_main(worker& w) {
    auto s = w.share;
    if (w.listener) {
        std::vector<std::shared_ptr<loop_share>> only_here{s};
        try {
            co_await accept_loop(s, w.listener, only_here);
        } catch (const std::exception& e) {
            log(spdlog::level::err, "accept on an extra loop failed: {}", e.what());
        }
    }
    while (!s->stop) co_await wait_for_wake(*s, clock::time_point::max());
    co_await drain_share(s, nullptr);
    if (auto main = s->common->main.lock()) {
        main->owner.post([main] {
            --main->workers_left;
            main->notify();
        });
    }
}

}  // namespace
}  // namespace detail

task<> server::serve(connection_handler handler, serve_options options) {
    using namespace detail;
    auto listener = state_;
    if (options.threads == 0) {
        throw error(errc::invalid_argument,
                    "serve " + listener->local.to_string() + " (0 threads)");
    }
    if (options.threads > 1 && options.balance == balance_mode::reuse_port &&
        !listener->reuse_port) {
        throw error(errc::invalid_argument,
                    "serve " + listener->local.to_string() +
                        " (balance_mode::reuse_port needs listen_options{.reuse_port = true})");
    }
    // serve() goes on after a cancellation (it drains), so its own co_awaits must not throw
    // for it; the caller's setting comes back on return (the checks above throw before).
    bool throw_if_cancelled = co_await asio::this_coro::throw_if_cancelled();
    co_await asio::this_coro::throw_if_cancelled(false);
    auto common = std::make_shared<serve_common>(std::move(handler), options);
    common->tls = listener->tls;
    common->handshake_timeout = listener->handshake_timeout;
    common->proxy = listener->proxy;
    auto main = std::make_shared<loop_share>(listener->owner, common, listener->counters);
    common->main = main;

    std::vector<std::unique_ptr<worker>> workers;
    std::exception_ptr failure;
    try {
        for (std::size_t i = 1; i < options.threads; ++i) {
            auto w = std::make_unique<worker>();
            w->share =
                std::make_shared<loop_share>(w->l, common, std::make_shared<server_counters>());
            listener->add_counters(w->share->counters);
            if (options.balance == balance_mode::reuse_port) {
                w->listener = open_listener(listener->local,
                                            {.backlog = listener->backlog,
                                             .reuse_port = true,
                                             .v6_only = listener->v6_only,
                                             .max_preparing = listener->max_preparing},
                                            w->l);
                w->listener->counters = w->share->counters;
                listener->link(w->listener);
            }
            workers.push_back(std::move(w));
        }
        for (auto& w : workers) {
            w->thread = std::thread([&w = *w, main] {
                try {
                    (void)netloop::run([&w] { return worker_main(w); },
                                       run_options{.cancel_on_signal = false, .rethrow = true},
                                       w.l);
                } catch (const std::exception& e) {
                    log(spdlog::level::err, "extra loop ended: {}", e.what());
                }
                // The loop has ended, its lingering closes too: joining now does not block.
                main->owner.post([main] {
                    --main->threads_left;
                    main->notify();
                });
            });
            ++main->workers_left;
            ++main->threads_left;
        }
        std::vector<std::shared_ptr<loop_share>> targets{main};
        if (options.balance == balance_mode::hand_off) {
            for (auto& w : workers) targets.push_back(w->share);
        }
        co_await accept_loop(main, listener, targets);
    } catch (...) {
        failure = std::current_exception();
    }

    // The drain: no new connections on any loop, then every loop lets its handlers finish.
    listener->close();
    auto drain_for = std::min(options.drain_timeout,
                              std::chrono::duration_cast<duration>(std::chrono::hours(24 * 365)));
    common->drain_until = clock::now() + drain_for;
    log(spdlog::level::info, "server {}: draining", listener->local.to_string());
    if (options.on_drain) {
        try {
            options.on_drain();
        } catch (const std::exception& e) {
            log(spdlog::level::err, "on_drain threw: {}", e.what());
        }
    }
    for (auto& w : workers) {
        auto share = w->share;
        w->l.post([share] {
            share->stop = true;
            share->notify();
        });
    }
    auto state = co_await asio::this_coro::cancellation_state;
    cancel_forwarder force(state.slot(), *main);
    co_await drain_share(main, &force);
    bool forwarded = false;
    while (main->workers_left > 0) {
        if (force.fired && !forwarded) {
            forwarded = true;
            for (auto& w : workers) {
                auto share = w->share;
                w->l.post([share] {
                    share->force = true;
                    share->notify();
                });
            }
        }
        co_await wait_for_wake(*main, clock::time_point::max(), &force);
    }
    // The extra loops still run their lingering closes after draining; wait for their threads
    // on this loop (never by blocking it in join()), so it goes on serving what it has.
    while (main->threads_left > 0) co_await wait_for_wake(*main, clock::time_point::max());
    for (auto& w : workers) {
        if (w->thread.joinable()) w->thread.join();
    }
    co_await asio::this_coro::throw_if_cancelled(throw_if_cancelled);
    if (failure) std::rethrow_exception(failure);
}

}  // namespace netloop
