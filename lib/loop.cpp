// SPDX-License-Identifier: MIT
// loop, spawn and run: the io_context, the tasks spawned on it, and running one coroutine.
#include <cerrno>  // program_invocation_short_name (glibc)
#include <csignal>
#include <cstdio>
#include <cstdlib>  // getprogname (BSD, macOS)
#include <exception>
#include <memory>
#include <optional>
#include <string>

#include <asio/post.hpp>
#include <asio/signal_set.hpp>

#include <netloop/error.hpp>
#include <netloop/loop.hpp>

#include "logging.hpp"
#include "loop_access.hpp"
#include "task_registry.hpp"

namespace netloop {

// One thread runs the loop and starts every I/O operation on its sockets, so Asio's locking of
// per-socket reactor state is not needed (ASIO_CONCURRENCY_HINT_UNSAFE_IO); the scheduler and
// descriptor registration stay locked, so post() from other threads (server::close, stop,
// loop::post) is safe. A loop that other threads accept sockets into (the extra loops of a
// hand_off serve()) keeps the reactor locks too.
loop::loop() : loop(false) {}

loop::loop(bool shared_reactor)
    : tasks_(std::make_unique<detail::task_registry>()),
      context_(shared_reactor ? 1 : ASIO_CONCURRENCY_HINT_UNSAFE_IO) {}

loop::~loop() { tasks_->destroying = true; }

namespace {

thread_local loop* running_here = nullptr;

// Makes `l` the current loop of this thread, and marks it running, while it runs.
class current_scope {
public:
    explicit current_scope(loop& l) noexcept : loop_(l), previous_(running_here) {
        running_here = &l;
        detail::loop_access::set_running(l, true);
    }
    ~current_scope() {
        detail::loop_access::set_running(loop_, false);
        running_here = previous_;
    }
    current_scope(const current_scope&) = delete;
    current_scope& operator=(const current_scope&) = delete;

private:
    loop& loop_;
    loop* previous_;
};

}  // namespace

loop& loop::shared() {
    static loop instance;
    return instance;
}

loop& loop::current() noexcept { return running_here != nullptr ? *running_here : shared(); }

void loop::run() {
    current_scope here(*this);
    context_.restart();
    context_.run();
}

void loop::stop() noexcept { context_.stop(); }

std::size_t loop::spawned() const noexcept { return tasks_->size(); }

void loop::cancel_spawned() noexcept { tasks_->cancel_all(); }

void spawn(task<> t, loop& l) {
    detail::spawn_tracked(l.context(), *l.tasks_, std::move(t), [](std::exception_ptr e) {
        if (e) detail::log_escaped(e, "task", "spawned");
    });
}

namespace detail {

// Shared with the handlers, so a loop stopped before the task ends leaves nothing dangling.
struct run_state {
    explicit run_state(asio::io_context& context) : signals(context) {}
    asio::cancellation_signal cancel;
    asio::signal_set signals;
    std::exception_ptr failure;
    bool finished = false;
};

void watch_signals(const std::shared_ptr<run_state>& state) {
    state->signals.async_wait([state](const asio::error_code& ec, int signo) {
        if (ec || state->finished) return;
        log(spdlog::level::info, "signal {}: cancelling", signo);
        // Every signal is passed on: the first ends a pending next(), a second one reaches a
        // draining serve() as "force now".
        state->cancel.emit(asio::cancellation_type::terminal);
        watch_signals(state);
    });
}

std::exception_ptr run_task(loop& l, task<> t, const run_options& options) {
    current_scope here(l);
    auto& context = l.context();
    context.restart();
    auto& tasks = loop_access::tasks(l);
    tasks.draining = false;
    auto state = std::make_shared<run_state>(context);
    if (options.cancel_on_signal) {
        state->signals.add(SIGINT);
        state->signals.add(SIGTERM);
        watch_signals(state);
    }
    asio::co_spawn(
        context, std::move(t),
        asio::bind_cancellation_slot(state->cancel.slot(), [state, &l](std::exception_ptr e) {
            state->finished = true;
            state->failure = e;
            asio::error_code ignored;
            state->signals.clear(ignored);
            state->signals.cancel(ignored);
            loop_access::tasks(l).draining = true;
            l.cancel_spawned();
        }));
    context.run();
    // run() returned by itself once every spawned task had ended (they were cancelled above),
    // or because loop::stop() was called before the task finished.
    context.restart();
    tasks.draining = false;
    if (!state->finished) {
        asio::error_code ignored;
        state->signals.clear(ignored);
        state->signals.cancel(ignored);
        return std::make_exception_ptr(
            error(errc::cancelled, "run: the loop was stopped before the task ended"));
    }
    return state->failure;
}

int failed(const std::exception_ptr& failure, const run_options& options) {
    if (options.rethrow) std::rethrow_exception(failure);
    std::string what;
    try {
        std::rethrow_exception(failure);
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
        what = "unknown exception";
    }
#if defined(__GLIBC__)
    const char* program = program_invocation_short_name;
#else
    const char* program = ::getprogname();  // BSD, macOS
#endif
    // One write, so the line is not interleaved with another thread's output.
    auto line = std::string(program) + ": " + what + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    return 1;
}

}  // namespace detail
}  // namespace netloop
