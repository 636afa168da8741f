// SPDX-License-Identifier: MIT
// loop, run and spawn: values, exceptions, cancelling spawned tasks, signals.
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <exception>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/log_capture.hpp"
#include "support/temp_file.hpp"

using namespace std::chrono_literals;
using netloop::test::run_bounded;

namespace {

std::atomic<int> rethrows{0};

}  // namespace

// Counts std::rethrow_exception calls, then forwards to the C++ runtime's. lib/ calls it through
// its PLT, so this definition in the executable comes first for it.
namespace std {
void rethrow_exception(exception_ptr e) {  // noreturn, as <exception> declares it
    rethrows.fetch_add(1);
    using real_fn = void (*)(exception_ptr);
    static const auto real = reinterpret_cast<real_fn>(
        dlsym(RTLD_NEXT, "_ZSt17rethrow_exceptionNSt15__exception_ptr13exception_ptrE"));
    if (real == nullptr) std::abort();
    real(std::move(e));
    std::abort();
}
}  // namespace std

namespace {

// Ends by throwing `kind` at once, noting how many rethrows had happened by then.
netloop::task<> ends_by(netloop::errc kind, int& rethrows_at_throw) {
    rethrows_at_throw = rethrows.load();
    throw netloop::error(kind, "test");
    co_return;
}

// Spawns ends_by(kind), waits (bounded) until it is gone, and returns the rethrows since its throw.
int rethrows_after_ending_by(netloop::errc kind) {
    int at_throw = 0;
    int now = run_bounded([&]() -> netloop::task<int> {
        netloop::spawn(ends_by(kind, at_throw));
        while (netloop::loop::shared().spawned() > 0) co_await netloop::test::sleep_for(1ms);
        co_return rethrows.load();
    });
    return now - at_throw;
}

// A coroutine that throws `what` once it has been suspended.
template <typename T>
netloop::task<T> fails(const char* what) {
    co_await netloop::test::sleep_for(1ms);
    throw std::runtime_error(what);
}

}  // namespace

TEST_CASE("run() returns the coroutine's value, and 0 for task<>", "[loop]") {
    CHECK(run_bounded([]() -> netloop::task<int> { co_return 42; }) == 42);
    CHECK(run_bounded([]() -> netloop::task<std::string> { co_return "done"; }) == "done");
    CHECK(run_bounded([]() -> netloop::task<> { co_return; }) == 0);
}

TEST_CASE("run() turns an error escaping the coroutine into one stderr line and status 1",
          "[loop]") {
    netloop::loop mine;
    netloop::test::temp_file err;
    std::fflush(stderr);
    int saved = ::dup(STDERR_FILENO);
    REQUIRE(saved >= 0);
    int status = -1;
    int status_int = -1;
    {
        std::FILE* to = std::fopen(err.path().c_str(), "w");
        REQUIRE(to != nullptr);
        ::dup2(::fileno(to), STDERR_FILENO);
        std::fclose(to);
        status = netloop::run(
            []() -> netloop::task<> {
                throw netloop::error(netloop::errc::bind_failed, "bind 127.0.0.1:1", EADDRINUSE);
                co_return;
            },
            mine);
        status_int = netloop::run([] { return fails<int>("two"); }, mine);
        std::fflush(stderr);
        ::dup2(saved, STDERR_FILENO);
        ::close(saved);
    }
    CHECK(status == 1);
    CHECK(status_int == 1);
    CHECK(err.contents() == std::string("loop_test: bind 127.0.0.1:1: ") +
                                std::strerror(EADDRINUSE) + "\nloop_test: two\n");
}

TEST_CASE("run() with .rethrow hands what escapes the coroutine to its caller", "[loop]") {
    netloop::loop mine;
    auto failing = []() -> netloop::task<> {
        co_await netloop::test::sleep_for(1ms);
        throw netloop::error(netloop::errc::bind_failed, "bind 127.0.0.1:1", EADDRINUSE);
    };
    try {
        (void)netloop::run(failing, netloop::run_options{.rethrow = true}, mine);
        FAIL("run() returned instead of rethrowing");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == netloop::errc::bind_failed);
        CHECK(e.sys_errno() == EADDRINUSE);
    }
    // A task<int> and a task<T> of another type hand it over the same way.
    CHECK_THROWS_AS(
        netloop::run([] { return fails<int>("int"); }, netloop::run_options{.rethrow = true}, mine),
        std::runtime_error);
    CHECK_THROWS_WITH(netloop::run([] { return fails<std::string>("no status to return"); }, mine),
                      "no status to return");
    CHECK(netloop::run([]() -> netloop::task<int> { co_return 3; }, mine) == 3);
}

TEST_CASE("run_bounded() rethrows what escapes the coroutine", "[loop]") {
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

// Asio's co_spawn rethrows once, handing the exception from the task's frame to spawn's
// completion; netloop adds none to look at it for a log that would not print it.
TEST_CASE("a task ended by connection_closed is not rethrown to be logged while logging is off",
          "[loop]") {
    netloop::set_logger(nullptr);
    CHECK(rethrows_after_ending_by(netloop::errc::connection_closed) == 1);
    {
        netloop::test::log_capture log(spdlog::level::critical);
        CHECK(rethrows_after_ending_by(netloop::errc::connection_closed) == 1);
    }
}

#if defined(__GLIBCXX__)
TEST_CASE("at level error, an expected ending is classified without a rethrow and not logged",
          "[loop]") {
    netloop::test::log_capture log(spdlog::level::err);
    CHECK(rethrows_after_ending_by(netloop::errc::connection_closed) == 1);
    CHECK(rethrows_after_ending_by(netloop::errc::cancelled) == 1);
    CHECK(rethrows_after_ending_by(netloop::errc::connection_reset) == 1);
    auto text = log.text();
    INFO(text);
    CHECK(text.find("connection closed") == std::string::npos);
    CHECK(text.find("error") != std::string::npos);  // the reset is logged, at error
}
#endif

TEST_CASE("at level debug, an expected ending is logged at debug", "[loop]") {
    netloop::test::log_capture log(spdlog::level::debug);
    (void)rethrows_after_ending_by(netloop::errc::connection_closed);
    INFO(log.text());
    CHECK(log.contains("debug task spawned ended: test"));
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
