// SPDX-License-Identifier: MIT
// deadlines: one timer per connection, armed for the earliest pending deadline.
#include <algorithm>

#include "connection_impl.hpp"
#include "logging.hpp"

namespace netloop::detail {

// The timer is re-armed lazily: an operation that ends before its deadline leaves the wait
// outstanding, the next operation only moves its direction's `at` (later), and the wait, when
// it fires early, re-arms for what is due then. A busy connection thus touches its timer about
// once per timeout period, not once per call; the clock is read once per operation (twice
// under an idle bound, whose activity is the end of an operation too), and an operation whose
// deadline is no earlier than the outstanding wait's does not call arm() at all.
void connection_impl::start_clock(direction& d, duration timeout) {
    auto now = clock::now();
    if (limits) limits->last_activity = now;
    d.at = deadline_after(now, timeout);
    // The common case, a timeout as long as the last one: the wait outstanding is due no later.
    if (d.at == never || (timer_armed && timer->expiry() <= d.at)) return;
    arm(d.at);
}

void connection_impl::arm(clock::time_point at) {
    if (!timer) timer = std::make_unique<asio::steady_timer>(owner.context());
    if (timer_armed) {
        // Cancels the outstanding wait; its handler finds `at` due soonest and re-arms.
        if (timer->expiry() > at) timer->expires_at(at);
        return;
    }
    timer_armed = true;
    timer->expires_at(at);
    timer->async_wait([self = shared_from_this()](const asio::error_code&) { self->on_timer(); });
}

void connection_impl::on_timer() noexcept {
    timer_armed = false;
    if (closed) return;
    auto now = clock::now();
    auto next = never;
    for (auto* d : {&reader, &writer}) {
        if (!d->pending) continue;
        if (d->at <= now) {
            d->expired = true;
            d->at = never;
            d->signal.emit(asio::cancellation_type::terminal);
        } else {
            next = std::min(next, d->at);
        }
    }
    if (limits) {
        if (limits->due() <= now) {
            limit_expired = true;
            log(spdlog::level::debug, "connection {}: {}", remote.to_string(),
                now >= limits->until ? "connection deadline reached" : "idle timeout");
            close();
            return;
        }
        next = std::min(next, limits->due());
    }
    if (next == never) return;
    try {
        arm(next);
    } catch (...) {
        // No memory for the wait: the deadline is lost, so the connection must not outlive it.
        abort();
    }
}

void connection_impl::set_limits(duration idle, duration whole) {
    if (idle == no_timeout && whole == no_timeout) return;
    limits = std::make_unique<connection_limits>();
    auto now = clock::now();
    limits->idle = idle;
    limits->last_activity = now;
    limits->until = deadline_after(now, whole);
    arm(limits->due());
}

}  // namespace netloop::detail
