// SPDX-License-Identifier: MIT
// loop, run and spawn: values, exceptions, cancelling spawned tasks, signals.
#include <csignal>
#include <stdexcept>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/log_capture.hpp"

using namespace std::chrono_literals;
using netloop::test::run_bounded;

TEST_CASE("run() returns the coroutine's value, and 0 for task<>", "[loop]") {
    CHECK(run_bounded([]() -> netloop::task<int> { co_return 42; }) == 42);
    CHECK(run_bounded([]() -> netloop::task<std::string> { co_return "done"; }) == "done");
    CHECK(run_bounded([]() -> netloop::task<> { co_return; }) == 0);
}

TEST_CASE("run() rethrows what escapes the coroutine", "[loop]") {
    CHECK_THROWS_WITH(run_bounded([]() -> netloop::task<> {
                          co_await netloop::test::sleep_for(1ms);
                          throw std::runtime_error("boom");
                      }),
                      "boom");
    // The loop is usable again afterwards.
    CHECK(run_bounded([]() -> netloop::task<int> { co_return 7; }) == 7);
}

TEST_CASE("an exception escaping a spawned task is logged and the process goes on", "[loop]") {
    netloop::test::log_capture log;
    int after = run_bounded([]() -> netloop::task<int> {
        netloop::spawn([]() -> netloop::task<> {
            co_await netloop::test::sleep_for(1ms);
            throw std::runtime_error("handler exploded");
        }());
        co_await netloop::test::sleep_for(50ms);
        co_return static_cast<int>(netloop::loop::shared().spawned());
    });
    CHECK(after == 0);
    CHECK(log.contains("error"));
    CHECK(log.contains("handler exploded"));
}

TEST_CASE("when run()'s coroutine ends, its pending spawned tasks are cancelled", "[loop]") {
    bool cancelled = false;
    run_bounded([&]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
        auto client = co_await netloop::connect(server.local_address(), 5s);
        auto conns = server.connections();
        auto accepted = co_await conns.next();
        REQUIRE(accepted);
        // An idle peer: this read would wait forever.
        netloop::spawn([](netloop::connection c, bool& flag) -> netloop::task<> {
            std::array<std::byte, 16> buf;
            try {
                (void)co_await c.read(buf, netloop::no_timeout);
            } catch (const netloop::error& e) {
                flag = e.kind() == netloop::errc::cancelled;
            }
        }(std::move(*accepted), cancelled));
    });
    CHECK(cancelled);
    CHECK(netloop::loop::shared().spawned() == 0);
}

TEST_CASE("SIGTERM during run() ends a pending next() with nullopt and run() returns 0",
          "[loop][signal]") {
    bool ended_by_nullopt = false;
    int result = run_bounded(
        [&]() -> netloop::task<> {
            auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
            netloop::spawn([]() -> netloop::task<> {
                co_await netloop::test::sleep_for(10ms);
                std::raise(SIGTERM);
            }());
            auto conns = server.connections();
            auto conn = co_await conns.next();
            ended_by_nullopt = !conn.has_value();
        },
        10s, netloop::run_options{.cancel_on_signal = true});
    CHECK(result == 0);
    CHECK(ended_by_nullopt);
}

TEST_CASE("a loop of one's own runs tasks apart from the shared loop", "[loop]") {
    netloop::loop mine;
    int v = netloop::run([]() -> netloop::task<int> { co_return 5; }, mine);
    CHECK(v == 5);
}
