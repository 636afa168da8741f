// SPDX-License-Identifier: MIT
// loop, run and spawn: one io_context, one thread, and the tasks that live on it.
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include <asio/post.hpp>

#include <netloop/export.hpp>
#include <netloop/task.hpp>

namespace netloop {

namespace detail {
class task_registry;
struct loop_access;
}  // namespace detail

/// One `asio::io_context`, run by one thread (epoll on Linux, kqueue on BSD and macOS).
///
/// Every netloop object belongs to one loop and is used from the thread that runs it;
/// `server::close()` is the one call that is safe from any thread.
/// Thread safety: `stop()` is safe from any thread; the rest belongs to the loop's thread.
class NETLOOP_API loop {
public:
    /// A new loop with its own `io_context`, tuned for one thread.
    loop();
    ~loop();
    loop(const loop&) = delete;
    loop& operator=(const loop&) = delete;

    /// The process-wide default loop: what `run()` drives unless given another.
    [[nodiscard]] static loop& shared();

    /// The loop running on the calling thread (inside `run()` or `loop::run()`), else
    /// `shared()`. The default of every API's `loop&` parameter, so handler code works
    /// unchanged on whichever loop of a multi-core `serve()` runs it.
    [[nodiscard]] static loop& current() noexcept;

    /// Runs `f()` on this loop's thread soon. Safe from any thread: the way tasks on different
    /// loops hand each other work (each loop's state is touched only by its own thread).
    template <typename F>
    void post(F&& f) {
        asio::post(context_, std::forward<F>(f));
    }

    /// Runs the loop on the calling thread until it has no more work or is stopped.
    void run();

    /// Makes `run()` return as soon as possible. Not a graceful shutdown: pending tasks stay
    /// suspended. Safe from any thread.
    void stop() noexcept;

    /// The `io_context`, for Asio objects that should live on this loop.
    [[nodiscard]] asio::io_context& context() noexcept { return context_; }

    /// The executor of the `io_context`.
    [[nodiscard]] asio::io_context::executor_type executor() noexcept {
        return context_.get_executor();
    }

    /// How many tasks started with `spawn()` on this loop have not finished yet.
    [[nodiscard]] std::size_t spawned() const noexcept;

    /// Cancels every task started with `spawn()` on this loop that is still pending.
    void cancel_spawned() noexcept;

private:
    friend void spawn(task<> t, loop& l);
    friend struct detail::loop_access;
    // `shared_reactor`: other threads register sockets with this loop's reactor.
    explicit loop(bool shared_reactor);
    // Declared first, destroyed last: the io_context's destructor frees pending tasks, which
    // still refer to their registry entries.
    std::unique_ptr<detail::task_registry> tasks_;
    asio::io_context context_;
};

/// Starts `t` on `l` as a detached task and returns at once.
///
/// An exception that escapes `t` is logged through the netloop logger (see `set_logger`) —
/// `errc::connection_closed` and cancellation at debug, everything else at error — and never
/// terminates the process. The task is cancelled when the `run()` that drives `l` finishes.
NETLOOP_API void spawn(task<> t, loop& l = loop::current());

/// How `run()` treats SIGINT and SIGTERM.
struct run_options {
    /// While `run()` runs, SIGINT and SIGTERM cancel the coroutine (each one, so a second signal
    /// reaches a draining `serve()` as "force now"). Off: the signals keep their disposition.
    bool cancel_on_signal = true;
};

namespace detail {

template <typename T>
struct task_value;
template <typename T, typename Executor>
struct task_value<asio::awaitable<T, Executor>> {
    using type = T;
};

NETLOOP_API void run_task(loop& l, task<> t, const run_options& options);

template <typename T>
task<> store_result(task<T> t, std::optional<T>& out) {
    out.emplace(co_await std::move(t));
}

}  // namespace detail

/// Runs the coroutine `f()` on `l` until it finishes and returns its value (0 for `task<>`);
/// an exception that escapes `f` is rethrown here.
///
/// The first SIGINT or SIGTERM cancels `f`: a pending `next()` yields `nullopt`, so a server
/// loop ends by itself (see `run_options`). When `f` finishes, tasks it spawned that are still
/// pending are cancelled and `run()` returns once they have ended.
template <typename F>
requires std::invocable<F&>
auto run(F&& f, const run_options& options, loop& l = loop::shared()) {
    using value_type = typename detail::task_value<std::invoke_result_t<F&>>::type;
    if constexpr (std::is_void_v<value_type>) {
        detail::run_task(l, std::invoke(f), options);
        return 0;
    } else {
        std::optional<value_type> result;
        detail::run_task(l, detail::store_result(std::invoke(f), result), options);
        return std::move(*result);
    }
}

/// `run(f, run_options{}, l)`.
template <typename F>
requires std::invocable<F&>
auto run(F&& f, loop& l = loop::shared()) { return run(std::forward<F>(f), run_options{}, l); }

}  // namespace netloop
