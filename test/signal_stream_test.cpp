// SPDX-License-Identifier: MIT
// signal_stream: raised signals come out of next().
#include <csignal>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"

using netloop::test::run_bounded;

TEST_CASE("raise(SIGUSR1) makes next() yield SIGUSR1", "[signal]") {
    int got = run_bounded([]() -> netloop::task<int> {
        netloop::signal_stream signals({SIGUSR1, SIGUSR2});
        std::raise(SIGUSR1);
        co_return co_await signals.next();
    });
    CHECK(got == SIGUSR1);
}

TEST_CASE("signals that arrive before next() is awaited are not lost", "[signal]") {
    auto got = run_bounded([]() -> netloop::task<std::pair<int, int>> {
        netloop::signal_stream signals({SIGUSR1, SIGUSR2});
        std::raise(SIGUSR2);
        co_await netloop::test::yield();
        std::raise(SIGUSR1);
        int first = co_await signals.next();
        int second = co_await signals.next();
        co_return std::pair<int, int>{first, second};
    });
    CHECK(got.first == SIGUSR2);
    CHECK(got.second == SIGUSR1);
}

TEST_CASE("watching an invalid signal throws errc::signal_failed", "[signal]") {
    try {
        netloop::signal_stream bad({SIGKILL});
        FAIL("SIGKILL was accepted");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == netloop::errc::signal_failed);
    }
}
