// SPDX-License-Identifier: MIT
// run_bounded: netloop::run with a watchdog, so a hung test fails instead of hanging.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <asio/post.hpp>

#include <netloop/netloop.hpp>

#include "catch.hpp"

namespace netloop::test {

using namespace std::chrono_literals;

// Runs `f` on the shared loop like netloop::run (signals left alone unless `options` say), with
// what escapes `f` rethrown here (`.rethrow` is always on). If it has not finished within
// `limit`, the watchdog stops the loop and the test fails.
template <typename F>
auto run_bounded(F&& f, std::chrono::milliseconds limit = 30s,
                 run_options options = {.cancel_on_signal = false}) {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    bool fired = false;
    std::thread watchdog([&] {
        std::unique_lock lock(m);
        if (!cv.wait_for(lock, limit, [&] { return done; })) {
            fired = true;
            loop::shared().stop();
        }
    });
    struct stop_watchdog {
        std::mutex& m;
        std::condition_variable& cv;
        bool& done;
        std::thread& t;
        ~stop_watchdog() {
            {
                std::lock_guard lock(m);
                done = true;
            }
            cv.notify_one();
            t.join();
        }
    };
    options.rethrow = true;
    try {
        stop_watchdog guard{m, cv, done, watchdog};
        return netloop::run(std::forward<F>(f), options);
    } catch (...) {
        if (fired) FAIL("watchdog: the test did not finish within " << limit.count() << " ms");
        throw;
    }
}

// Lets every other ready handler on the loop run once, then resumes.
inline task<> yield() {
    auto ex = co_await asio::this_coro::executor;
    co_await asio::post(ex, asio::use_awaitable);
}

// A task that completes after `d` (for letting other tasks run; never to synchronise).
inline task<> sleep_for(duration d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

}  // namespace netloop::test
