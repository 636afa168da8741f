// SPDX-License-Identifier: MIT
// server: listen, the bound port, bind errors, close() from another thread, cancelled accepts.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <thread>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/ip/tcp.hpp>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::test::run_bounded;

TEST_CASE("listen(0) binds a kernel-chosen port that a client can connect to", "[server]") {
    auto [port, accepted_local_port, client_peer_port] =
        run_bounded([]() -> netloop::task<std::tuple<int, int, int>> {
            auto s = netloop::server::listen(0);
            auto client = co_await netloop::connect(address::ipv4("127.0.0.1", s.local_port()), 5s);
            auto conns = s.connections();
            auto accepted = co_await conns.next();
            REQUIRE(accepted);
            co_return std::tuple<int, int, int>{s.local_port(), accepted->local_address().port(),
                                                client.remote_address().port()};
        });
    CHECK(port != 0);
    CHECK(accepted_local_port == port);
    CHECK(client_peer_port == port);
}

TEST_CASE("listen on ::1 accepts IPv6 clients", "[server]") {
    auto remote = run_bounded([]() -> netloop::task<address> {
        auto s = netloop::server::listen(address::parse("[::1]:0"));
        REQUIRE(s.local_address().is_v6());
        auto client = co_await netloop::connect(s.local_address(), 5s);
        auto conns = s.connections();
        auto accepted = co_await conns.next();
        REQUIRE(accepted);
        co_return accepted->remote_address();
    });
    CHECK(remote.is_v6());
    CHECK(remote.host() == "::1");
}

TEST_CASE("a second listen on a bound port throws bind_failed with EADDRINUSE", "[server]") {
    auto first = netloop::server::listen(address::parse("127.0.0.1:0"));
    auto taken = first.local_address();
    try {
        auto second = netloop::server::listen(taken);
        FAIL("second listen succeeded");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == errc::bind_failed);
        CHECK(e.sys_errno() == EADDRINUSE);
        CHECK(std::string(e.what()).find(taken.to_string()) != std::string::npos);
    }
}

TEST_CASE("a negative backlog is refused with errc::invalid_argument", "[server]") {
    try {
        (void)netloop::server::listen(address::parse("127.0.0.1:0"), -1);
        FAIL("listen accepted a negative backlog");
    } catch (const netloop::error& e) {
        CHECK(e.kind() == errc::invalid_argument);
    }
}

TEST_CASE("close() from another thread wakes a pending next() with nullopt", "[server]") {
    auto [woke_with_nullopt, refused, still_open] =
        run_bounded([]() -> netloop::task<std::tuple<bool, bool, bool>> {
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
            std::atomic<bool> awaiting{false};
            // The closer waits until the accept is about to be pending; its close() is posted
            // to the loop, which runs it only once next() has suspended in the accept.
            std::thread closer([&] {
                while (!awaiting.load()) std::this_thread::yield();
                s.close();
                s.close();  // twice is harmless
            });
            auto conns = s.connections();
            awaiting = true;
            auto conn = co_await conns.next();
            closer.join();
            bool refused = false;
            try {
                auto late = co_await netloop::connect(s.local_address(), 5s);
            } catch (const netloop::error& e) {
                refused = e.kind() == errc::connect_failed && e.sys_errno() == ECONNREFUSED;
            }
            co_return std::tuple<bool, bool, bool>{!conn.has_value(), refused, s.is_open()};
        });
    CHECK(woke_with_nullopt);
    CHECK(refused);
    CHECK_FALSE(still_open);
}

TEST_CASE("next() after close() yields nullopt at once", "[server]") {
    bool ended = run_bounded([]() -> netloop::task<bool> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        s.close();
        auto conns = s.connections();
        auto conn = co_await conns.next();
        co_return !conn.has_value();
    });
    CHECK(ended);
}

TEST_CASE("a cancelled next() leaves no accept behind: the next next() gets the client",
          "[server][cancel]") {
    auto [cancelled_result_empty, same_peer] =
        run_bounded([]() -> netloop::task<std::pair<bool, bool>> {
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
            auto conns = s.connections();
            asio::cancellation_signal cancel;
            std::optional<bool> first_empty;
            bool started = false;
            asio::co_spawn(
                netloop::loop::shared().context(),
                [&]() -> netloop::task<> {
                    started = true;  // next() initiates its accept before anything else runs
                    auto c = co_await conns.next();
                    first_empty = !c.has_value();
                },
                asio::bind_cancellation_slot(cancel.slot(), asio::detached));
            while (!started) co_await netloop::test::yield();
            cancel.emit(asio::cancellation_type::terminal);
            while (!first_empty) co_await netloop::test::yield();

            auto client = co_await netloop::connect(s.local_address(), 5s);
            auto accepted = co_await conns.next();
            REQUIRE(accepted);
            co_return std::pair<bool, bool>{*first_empty,
                                            accepted->remote_address() == client.local_address()};
        });
    CHECK(cancelled_result_empty);
    CHECK(same_peer);
}

TEST_CASE("stats() counts accepted connections and bytes", "[server][stats]") {
    auto stats = run_bounded([]() -> netloop::task<netloop::server_stats> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        auto conns = s.connections();
        for (int i = 0; i < 3; ++i) {
            auto client = co_await netloop::connect(s.local_address(), 5s);
            auto accepted = co_await conns.next();
            REQUIRE(accepted);
            co_await client.write(std::string_view("hello"), 5s);
            auto got = co_await netloop::test::read_n(*accepted, 5);
            co_await accepted->write(std::span<const std::byte>(got).first(2), 5s);
        }
        co_return s.stats();
    });
    CHECK(stats.accepted == 3);
    CHECK(stats.bytes_read == 15);
    CHECK(stats.bytes_written == 6);
    CHECK(stats.active == 0);
    CHECK(stats.peak_active == 1);
}

namespace {

// Accepts until the stream ends, counting; `ended` once next() yielded nullopt.
netloop::task<> accept_all(const netloop::server& s, std::atomic<int>& accepted,
                           std::atomic<bool>& ended) {
    auto conns = s.connections();
    while (auto c = co_await conns.next()) accepted.fetch_add(1, std::memory_order_relaxed);
    ended = true;
}

// Runs `l` until it has no more work, or stops it after `limit`.
void run_until_idle(netloop::loop& l, std::chrono::milliseconds limit) {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::thread watchdog([&] {
        std::unique_lock lock(m);
        if (!cv.wait_for(lock, limit, [&] { return done; })) l.stop();
    });
    l.run();
    {
        std::lock_guard lock(m);
        done = true;
    }
    cv.notify_one();
    watchdog.join();
}

}  // namespace

TEST_CASE(
    "close() from another thread is safe while the loop starts and stops running, and always "
    "ends a pending next()",
    "[server][threads]") {
    // close() decides between closing the acceptor on the calling thread (when no thread runs
    // the loop) and posting the close to the loop. Here the loop runs in short bursts
    // (loop::run() until a posted stop()), with an accept pending across them and clients
    // connecting all the time, so the loop starts running again right after close() looked:
    // the acceptor must never be touched by two threads at once (TSan), and next() must end.
    constexpr int rounds = 100;
    int ended_rounds = 0;
    int closed_rounds = 0;
    for (int round = 0; round < rounds; ++round) {
        netloop::loop l;
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"), 128, l);
        auto port = s.local_port();
        std::atomic<int> accepted{0};
        std::atomic<bool> ended{false};
        std::atomic<bool> stop_clients{false};
        asio::co_spawn(l.context(), accept_all(s, accepted, ended), asio::detached);
        std::thread clients([&stop_clients, port] {
            auto until = std::chrono::steady_clock::now() + 10s;
            while (!stop_clients && std::chrono::steady_clock::now() < until) {
                asio::io_context io;
                asio::ip::tcp::socket c(io);
                asio::error_code ec;
                c.connect({asio::ip::address_v4::loopback(), port}, ec);
                if (ec) break;  // refused: the server is closed
            }
        });
        std::thread closer([&s, &accepted, round] {
            // Relaxed: the count says when to go and orders nothing, so only what close()
            // itself does can make it safe against the loop's thread.
            auto until = std::chrono::steady_clock::now() + 10s;
            while (accepted.load(std::memory_order_relaxed) < 2 + round % 5 &&
                   std::chrono::steady_clock::now() < until) {
                std::this_thread::yield();
            }
            s.close();
        });
        auto until = std::chrono::steady_clock::now() + 10s;
        while (!ended && std::chrono::steady_clock::now() < until) {
            l.post([&l] { l.stop(); });
            l.run();
        }
        closer.join();
        stop_clients = true;
        clients.join();
        ended_rounds += ended ? 1 : 0;
        closed_rounds += s.is_open() ? 0 : 1;
        // Let the accepted connections' lingering closes end (their clients are gone).
        run_until_idle(l, 5s);
    }
    CHECK(ended_rounds == rounds);
    CHECK(closed_rounds == rounds);
}

TEST_CASE("close() from another thread is safe while the task it ends destroys the server",
          "[server][threads]") {
    // close() stops the listening at once (shutdown), so the loop's next() ends and the task that
    // owns the server returns and destroys it, while close() may still be running on this
    // thread: close() must keep what it uses alive until it returns (ASan: use after free).
    // To make the loop's thread win that race, both threads share one CPU and this one has used
    // more of it (a 5 ms busy loop), so the scheduler runs the woken loop thread at once.
    cpu_set_t before;
    pthread_getaffinity_np(pthread_self(), sizeof before, &before);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu() < 0 ? 0 : sched_getcpu(), &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);  // the loop thread inherits it
    struct restore_affinity {
        cpu_set_t& mask;
        ~restore_affinity() { pthread_setaffinity_np(pthread_self(), sizeof mask, &mask); }
    } restore{before};
    constexpr int rounds = 50;
    int ended_cleanly = 0;
    for (int round = 0; round < rounds; ++round) {
        netloop::loop l;
        std::promise<netloop::server*> listening;
        std::promise<bool> ended;
        std::thread loop_thread([&] {
            try {
                netloop::run(
                    [&]() -> netloop::task<> {
                        auto s = netloop::server::listen(address::parse("127.0.0.1:0"), 128, l);
                        auto conns = s.connections();
                        listening.set_value(&s);
                        (void)co_await conns.next();
                    },
                    netloop::run_options{.cancel_on_signal = false, .rethrow = true}, l);
                ended.set_value(true);
            } catch (...) {
                ended.set_value(false);
            }
        });
        auto server = listening.get_future();
        auto finished = ended.get_future();
        if (server.wait_for(10s) == std::future_status::ready) {
            auto* s = server.get();
            auto until = std::chrono::steady_clock::now() + 5ms;
            while (std::chrono::steady_clock::now() < until) {
            }
            s->close();
        }
        bool in_time = finished.wait_for(10s) == std::future_status::ready;
        if (!in_time) l.stop();
        loop_thread.join();
        ended_cleanly += in_time && finished.get() ? 1 : 0;
    }
    CHECK(ended_cleanly == rounds);
}
