// SPDX-License-Identifier: MIT
// loop, spawn and run: the io_context, the tasks spawned on it, and running one coroutine.
#include <netloop/loop.hpp>

#include <csignal>
#include <exception>
#include <list>
#include <optional>

#include <asio/post.hpp>
#include <asio/signal_set.hpp>

#include "logging.hpp"
#include "task_registry.hpp"

namespace netloop {

// Concurrency hint 1: one thread runs the loop, so Asio skips the locking a pool needs, while
// post() from other threads (server::close) stays safe.
loop::loop() : tasks_(std::make_unique<detail::task_registry>()), context_(1) {}

loop::~loop() = default;

loop& loop::shared() {
    static loop instance;
    return instance;
}

void loop::run() {
    context_.restart();
    context_.run();
}

void loop::stop() noexcept { context_.stop(); }

std::size_t loop::spawned() const noexcept { return tasks_->size(); }

void loop::cancel_spawned() noexcept { tasks_->cancel_all(); }

void spawn(task<> t, loop& l) {
    auto& registry = *l.tasks_;
    auto* entry = registry.add();
    asio::co_spawn(l.context(), std::move(t),
                   asio::bind_cancellation_slot(
                       entry->signal.slot(), [&l, &registry, entry](std::exception_ptr e) {
                           if (e) detail::log_escaped(e, "task", "spawned");
                           // The entry's signal is still referenced by co_spawn's frames while
                           // this handler runs; free it from a fresh handler.
                           registry.remove(entry);
                           asio::post(l.context(), [owned = registry.release(entry)] {});
                       }));
}

namespace detail {

void run_task(loop& l, task<> t, const run_options& options) {
    auto& context = l.context();
    context.restart();

    asio::cancellation_signal cancel;
    std::exception_ptr failure;
    bool finished = false;
    std::optional<asio::signal_set> signals;

    // Every SIGINT/SIGTERM is passed on as a cancellation: the first ends a pending next(), a
    // second one reaches a draining serve() as "force now".
    std::function<void(const asio::error_code&, int)> on_signal;
    if (options.cancel_on_signal) {
        signals.emplace(context, SIGINT, SIGTERM);
        on_signal = [&](const asio::error_code& ec, int signo) {
            if (ec || finished) return;
            log(spdlog::level::info, "signal {}: cancelling", signo);
            cancel.emit(asio::cancellation_type::terminal);
            signals->async_wait(on_signal);
        };
        signals->async_wait(on_signal);
    }

    asio::co_spawn(context, std::move(t),
                   asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e) {
                       finished = true;
                       failure = e;
                       if (signals) {
                           asio::error_code ignored;
                           signals->cancel(ignored);
                       }
                       l.cancel_spawned();
                   }));
    context.run();
    // run() returned: every spawned task has ended (they were cancelled above), and nothing
    // else was left to do.
    signals.reset();
    context.restart();
    if (failure) std::rethrow_exception(failure);
}

}  // namespace detail
}  // namespace netloop
