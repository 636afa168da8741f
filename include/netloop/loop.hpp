// SPDX-License-Identifier: MIT
// loop, run and spawn: one io_context, one thread, and the tasks that live on it.
#pragma once

#include <netloop/detail/config.hpp>

#include <concepts>
#include <exception>
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

/// One `asio::io_context`, run by one thread (epoll; netloop is supported and tested on Linux).
///
/// Every netloop object belongs to one loop and is used from the thread that runs it; the calls
/// whose notes say so (`server::close()`, `server::stats()`) are safe from any thread.
/// Thread safety: `stop()` and `post()` are safe from any thread; the rest is the loop thread's.
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
/// Throws `std::bad_alloc` if memory runs out before the task starts; `t` is then destroyed
/// unrun (its parameters with it: a connection given to it closes).
///
/// Give the task what it uses as coroutine parameters, never as lambda captures: parameters
/// are copied into the coroutine's frame, captures stay in the lambda object, which
/// `spawn([&c]() -> task<> { ... }())` destroys at the end of the statement while the task
/// still runs. Write a free function, `spawn(session(std::move(c)))`, or a lambda without
/// captures that takes parameters, `spawn([](connection c) -> task<> { ... }(std::move(c)))`.
NETLOOP_API void spawn(task<> t, loop& l = loop::current());

/// How `run()` treats SIGINT and SIGTERM, and an error that escapes its coroutine.
struct run_options {
    /// While `run()` runs, SIGINT and SIGTERM cancel the coroutine (each one, so a second signal
    /// reaches a draining `serve()` as "force now"). Off: the signals keep their disposition.
    bool cancel_on_signal = true;
    /// Off (the default): an exception that escapes a `task<>` or `task<int>` coroutine becomes
    /// one line on stderr, `<program>: <what()>` (e.g. `echo: bind 127.0.0.1:8080: Address
    /// already in use`), and `run()` returns 1, so `return netloop::run(...)` in `main` exits
    /// with status 1 instead of aborting. On: `run()` rethrows the exception to its caller.
    /// A coroutine of another result type has no exit status to give: its exception is always
    /// rethrown.
    bool rethrow = false;
};

namespace detail {

template <typename T>
struct task_value;
template <typename T, typename Executor>
struct task_value<asio::awaitable<T, Executor>> {
    using type = T;
};

// Runs `t` on `l`; what escaped it (or the loop being stopped first), else null.
NETLOOP_API std::exception_ptr run_task(loop& l, task<> t, const run_options& options);

// Rethrows `failure` if `options.rethrow`, else writes "<program>: <what>" to stderr; returns 1.
NETLOOP_API int failed(const std::exception_ptr& failure, const run_options& options);

template <typename T>
task<> store_result(task<T> t, std::optional<T>& out) {
    out.emplace(co_await std::move(t));
}

}  // namespace detail

/// Runs the coroutine `f()` on `l` until it finishes and returns its value (0 for `task<>`).
///
/// An exception that escapes `f` of a `task<>` or `task<int>` is written to stderr as one line,
/// `<program>: <what()>`, and `run()` returns 1: the status for `main` to return. With
/// `run_options{.rethrow = true}`, and for every other result type, it is rethrown here instead.
/// If the loop is stopped (`loop::stop()`) before `f` ends, that is an `error` with
/// `errc::cancelled`, treated the same way.
///
/// The first SIGINT or SIGTERM cancels `f`: a pending `next()` yields `nullopt`, so a server
/// loop ends by itself (see `run_options`). When `f` finishes, tasks it spawned that are still
/// pending are cancelled and `run()` returns once they have ended.
template <typename F>
requires std::invocable<F&>
auto run(F&& f, const run_options& options, loop& l = loop::shared()) {
    using value_type = typename detail::task_value<std::invoke_result_t<F&>>::type;
    if constexpr (std::is_void_v<value_type>) {
        auto failure = detail::run_task(l, std::invoke(f), options);
        if (failure) return detail::failed(failure, options);
        return 0;
    } else {
        std::optional<value_type> result;
        auto failure = detail::run_task(l, detail::store_result(std::invoke(f), result), options);
        if (failure) {
            if constexpr (std::is_same_v<value_type, int>) {
                return detail::failed(failure, options);
            } else {
                std::rethrow_exception(failure);
            }
        }
        return std::move(*result);
    }
}

/// `run(f, run_options{}, l)`.
template <typename F>
requires std::invocable<F&>
auto run(F&& f, loop& l = loop::shared()) { return run(std::forward<F>(f), run_options{}, l); }

}  // namespace netloop
