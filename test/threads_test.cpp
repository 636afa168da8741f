// SPDX-License-Identifier: MIT
// Multi-core serve(): connections spread over every loop, byte-exact echo, close() from another
// thread drains all loops, stats() adds up. Runs under TSan in the test command.
#include <map>
#include <mutex>
#include <thread>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::task;
using netloop::test::run_bounded;

namespace {

// Which loop ran each handler, recorded from the handlers' own threads.
struct loop_tally {
    std::mutex m;
    std::map<const netloop::loop*, int> handlers;
    bool counting = true;

    void record() {
        std::lock_guard lock(m);
        if (counting) ++handlers[&netloop::loop::current()];
    }
    std::vector<int> counts() {
        std::lock_guard lock(m);
        counting = false;
        std::vector<int> out;
        for (auto& [l, n] : handlers) out.push_back(n);
        return out;
    }
};

task<> echo(netloop::connection c, loop_tally& tally) {
    tally.record();
    std::array<std::byte, 8192> buf;
    try {
        for (;;) {
            auto n = co_await c.read(buf, 10s);
            co_await c.write(std::span(buf).first(n), 10s);
        }
    } catch (const netloop::error& e) {
        if (e.kind() != netloop::errc::connection_closed) throw;
    }
}

task<bool> one_echo(netloop::connection& c, unsigned seed) {
    auto msg = netloop::test::pattern(1000 + seed % 3000, seed);
    co_await c.write(msg, 10s);
    auto back = co_await netloop::test::read_n(c, msg.size());
    co_return back == msg;
}

task<> client(address to, unsigned seed, int& ok, int& done) {
    auto c = co_await netloop::connect(to, 5s);
    bool good = co_await one_echo(c, seed);
    ok += good ? 1 : 0;
    ++done;
}

struct outcome {
    std::vector<int> per_loop;
    int echoed = 0;
    bool drained_clients_ok = false;
    bool serve_returned = false;
    netloop::server_stats stats;
    std::uint64_t bytes_sent = 0;
};

outcome exercise(std::size_t threads, netloop::balance_mode balance) {
    loop_tally tally;
    outcome out;
    run_bounded(
        [&]() -> task<> {
            auto s = netloop::server::listen(
                address::parse("127.0.0.1:0"),
                {.reuse_port = balance == netloop::balance_mode::reuse_port});
            bool served = false;
            netloop::spawn([](netloop::server& srv, loop_tally& t, std::size_t n,
                              netloop::balance_mode b, bool& flag) -> task<> {
                co_await srv.serve([&t](netloop::connection c) { return echo(std::move(c), t); },
                                   {.drain_timeout = 20s, .threads = n, .balance = b});
                flag = true;
            }(s, tally, threads, balance, served));

            int ok = 0;
            int done = 0;
            for (unsigned i = 0; i < 100; ++i) {
                netloop::spawn(client(s.local_address(), i, ok, done));
                out.bytes_sent += 1000 + i % 3000;
            }
            while (done < 100) co_await netloop::test::sleep_for(2ms);
            out.echoed = ok;
            out.per_loop = tally.counts();

            // Eight clients stay connected; close() comes from a third thread; their handlers
            // (on every loop) are drained, not cut: each finishes one more echo.
            std::vector<netloop::connection> open;
            bool all = true;
            for (unsigned i = 0; i < 8; ++i) {
                open.push_back(co_await netloop::connect(s.local_address(), 5s));
                all = (co_await one_echo(open.back(), 1000 + i)) && all;
                out.bytes_sent += 1000 + (1000 + i) % 3000;
            }
            std::thread closer([&s] { s.close(); });
            closer.join();
            for (unsigned i = 0; i < 8; ++i) {
                all = (co_await one_echo(open[i], 2000 + i)) && all;
                out.bytes_sent += 1000 + (2000 + i) % 3000;
            }
            open.clear();  // the clients leave; the drain completes
            while (!served) co_await netloop::test::sleep_for(2ms);
            out.drained_clients_ok = all;
            out.serve_returned = served;
            out.stats = s.stats();
        },
        60s);
    return out;
}

}  // namespace

TEST_CASE("hand_off spreads connections evenly over 2 and 4 loops and drains them all",
          "[threads]") {
    auto threads = GENERATE(std::size_t{2}, std::size_t{4});
    CAPTURE(threads);
    auto r = exercise(threads, netloop::balance_mode::hand_off);
    CHECK(r.echoed == 100);
    REQUIRE(r.per_loop.size() == threads);
    int even = static_cast<int>(100 / threads);
    for (int n : r.per_loop) {
        CHECK(n >= even - 1);
        CHECK(n <= even + 1);
    }
    CHECK(r.drained_clients_ok);
    CHECK(r.serve_returned);
    CHECK(r.stats.accepted == 108);
    CHECK(r.stats.bytes_read == r.bytes_sent);
    CHECK(r.stats.bytes_written == r.bytes_sent);
    CHECK(r.stats.active == 0);
}

TEST_CASE("reuse_port gives every one of 2 and 4 loops connections and drains them all",
          "[threads]") {
    auto threads = GENERATE(std::size_t{2}, std::size_t{4});
    CAPTURE(threads);
    auto r = exercise(threads, netloop::balance_mode::reuse_port);
    CHECK(r.echoed == 100);
    CHECK(r.per_loop.size() == threads);  // every loop served at least one of the 100
    CHECK(r.drained_clients_ok);
    CHECK(r.serve_returned);
    CHECK(r.stats.accepted == 108);
    CHECK(r.stats.bytes_read == r.bytes_sent);
    CHECK(r.stats.bytes_written == r.bytes_sent);
    CHECK(r.stats.active == 0);
}

TEST_CASE("reuse_port balance on a server made without reuse_port is refused", "[threads]") {
    auto kind = run_bounded([]() -> task<netloop::errc> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        try {
            co_await s.serve([](netloop::connection) -> task<> { co_return; },
                             {.threads = 2, .balance = netloop::balance_mode::reuse_port});
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return netloop::errc{};
    });
    CHECK(kind == netloop::errc::invalid_argument);
}

TEST_CASE("max_connections holds across loops", "[threads]") {
    auto rejected = run_bounded([]() -> task<std::uint64_t> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        bool served = false;
        netloop::spawn([](netloop::server& srv, bool& flag) -> task<> {
            co_await srv.serve(
                [](netloop::connection c) -> task<> {
                    std::array<std::byte, 16> buf;
                    try {
                        for (;;) (void)co_await c.read(buf, 10s);
                    } catch (const netloop::error&) {
                    }
                },
                {.max_connections = 3, .on_limit = netloop::limit_policy::reject, .threads = 2});
            flag = true;
        }(s, served));
        std::vector<netloop::connection> held;
        for (int i = 0; i < 3; ++i) {
            held.push_back(co_await netloop::connect(s.local_address(), 5s));
            co_await held.back().write(std::string_view("x"), 5s);
        }
        while (s.stats().active < 3) co_await netloop::test::sleep_for(2ms);
        // The fourth is turned away whichever loop it lands on: it reads EOF.
        auto fourth = co_await netloop::connect(s.local_address(), 5s);
        std::array<std::byte, 4> buf;
        try {
            (void)co_await fourth.read(buf, 5s);
        } catch (const netloop::error&) {
        }
        auto r = s.stats().rejected;
        held.clear();
        s.close();
        while (!served) co_await netloop::test::sleep_for(2ms);
        co_return r;
    });
    CHECK(rejected == 1);
}

namespace {

// Which loop serves each client, by the client's port; written by the handlers.
struct loop_of_client {
    std::mutex m;
    std::map<std::uint16_t, const netloop::loop*> loops;
};

// Records the loop it runs on, then holds the connection until the client closes it.
task<> record_and_hold(netloop::connection c, loop_of_client& where) {
    {
        std::lock_guard lock(where.m);
        where.loops[c.remote_address().port()] = &netloop::loop::current();
    }
    std::array<std::byte, 16> buf;
    try {
        for (;;) (void)co_await c.read(buf, 10s);
    } catch (const netloop::error&) {
    }
}

}  // namespace

TEST_CASE(
    "stats().peak_active with two loops is the most connections open at once on both, not the "
    "sum of each loop's own peak",
    "[threads]") {
    struct result {
        std::uint64_t true_peak = 0;
        std::uint64_t sum_of_loop_peaks = 0;
        std::uint64_t reported = 0;
    };
    auto r = run_bounded(
        []() -> task<result> {
            loop_of_client where;
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
            bool served = false;
            netloop::spawn([](netloop::server& srv, loop_of_client& w, bool& flag) -> task<> {
                co_await srv.serve(
                    [&w](netloop::connection c) { return record_and_hold(std::move(c), w); },
                    {.drain_timeout = 10s, .threads = 2});
                flag = true;
            }(s, where, served));

            struct held_connection {
                netloop::connection conn;
                const netloop::loop* on;
            };
            std::vector<held_connection> held;
            std::map<const netloop::loop*, std::uint64_t> open_on;
            std::map<const netloop::loop*, std::uint64_t> peak_on;
            result out;
            auto open_one = [&]() -> task<const netloop::loop*> {
                auto c = co_await netloop::connect(s.local_address(), 5s);
                auto port = c.local_address().port();
                const netloop::loop* on = nullptr;
                while (on == nullptr) {
                    {
                        std::lock_guard lock(where.m);
                        if (auto it = where.loops.find(port); it != where.loops.end()) {
                            on = it->second;
                        }
                    }
                    if (on == nullptr) co_await netloop::test::sleep_for(2ms);
                }
                held.push_back({std::move(c), on});
                peak_on[on] = std::max(peak_on[on], ++open_on[on]);
                out.true_peak = std::max<std::uint64_t>(out.true_peak, held.size());
                co_return on;
            };
            // Closes the held connections whose loop `close_it` names, and waits until the
            // server counts them closed.
            auto close_where = [&](auto close_it) -> task<> {
                std::erase_if(held, [&](held_connection& h) {
                    if (!close_it(h.on)) return false;
                    --open_on[h.on];
                    return true;
                });
                while (s.stats().active != held.size()) {
                    co_await netloop::test::sleep_for(2ms);
                }
            };
            // Loop X's peak first: open until X has two, then close the other loop's. Then
            // close all, and open until the other loop has two. Each loop peaks at 2, but the
            // two loops' peaks come at different times: together they never held 4.
            const netloop::loop* x = nullptr;
            for (int i = 0; i < 20 && x == nullptr; ++i) {
                auto on = co_await open_one();
                if (open_on[on] == 2) x = on;
            }
            auto not_on_x = [&x](const netloop::loop* on) { return on != x; };
            auto any = [](const netloop::loop*) { return true; };
            co_await close_where(not_on_x);
            co_await close_where(any);
            const netloop::loop* y = nullptr;
            for (int i = 0; i < 20 && y == nullptr; ++i) {
                auto on = co_await open_one();
                if (on != x && open_on[on] == 2) y = on;
            }
            for (auto& [l, peak] : peak_on) out.sum_of_loop_peaks += peak;
            out.reported = s.stats().peak_active;
            held.clear();
            s.close();
            while (!served) co_await netloop::test::sleep_for(2ms);
            co_return out;
        },
        60s);
    // The scenario is meaningful only if the two differ (hand_off's turns make them 3 and 4).
    REQUIRE(r.sum_of_loop_peaks != r.true_peak);
    CHECK(r.reported == r.true_peak);
}
