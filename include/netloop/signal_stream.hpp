// SPDX-License-Identifier: MIT
// signal_stream: POSIX signals as an awaitable stream.
#pragma once

#include <netloop/detail/config.hpp>

#include <initializer_list>
#include <memory>

#include <netloop/export.hpp>
#include <netloop/loop.hpp>
#include <netloop/task.hpp>

namespace netloop {

/// Watches a set of signals; `co_await next()` yields each one as it arrives.
///
/// The handlers are removed when the stream is destroyed. Signals that arrive while nobody
/// awaits `next()` are queued, so none is lost. Thread safety: the loop's thread only.
class NETLOOP_API signal_stream {
public:
    /// Starts watching `signals` on `l`.
    ///
    /// Throws `error` with `errc::signal_failed` if a signal cannot be watched.
    explicit signal_stream(std::initializer_list<int> signals, loop& l = loop::current());
    ~signal_stream();
    signal_stream(signal_stream&&) noexcept;
    signal_stream& operator=(signal_stream&&) noexcept;

    /// Waits for the next signal and returns its number.
    ///
    /// Throws `error` with `errc::cancelled` if the awaiting task is cancelled (which cancels
    /// the wait).
    [[nodiscard]] task<int> next();

private:
    struct state;
    std::unique_ptr<state> state_;
};

}  // namespace netloop
