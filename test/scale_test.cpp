// SPDX-License-Identifier: MIT
// Scale: 10,000 concurrent connections through samples/daemon, and its RSS cost per connection.
#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/fault_helpers.hpp"
#include "support/loopback.hpp"
#include "support/serve_helpers.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::task;
using netloop::test::daemon_process;
using netloop::test::daemon_stats;
using netloop::test::eventually;
using netloop::test::pattern;
using netloop::test::read_n;
using netloop::test::run_bounded;
using netloop::test::scaled;

namespace {

struct open_tally {
    std::vector<netloop::connection> open;
    int exact = 0;
    int failed = 0;
    int finished_openers = 0;
    std::vector<std::string> failures;
};

// Opens connections `first`, `first + step`, ... below `count` one after another: each connects,
// echoes one 64-byte message of its own and stays open in `t.open`.
task<> open_and_echo(address to, int first, int step, int count, open_tally& t) {
    for (int i = first; i < count; i += step) {
        try {
            auto c = co_await netloop::connect(to, 20s);
            auto msg = pattern(64, static_cast<unsigned>(i));
            co_await c.write(msg, 20s);
            auto back = co_await read_n(c, msg.size(), 20s);
            t.exact += back == msg ? 1 : 0;
            t.open.push_back(std::move(c));
        } catch (const std::exception& e) {
            ++t.failed;
            if (t.failures.size() < 10) t.failures.push_back(e.what());
        }
    }
    ++t.finished_openers;
}

// Opens `count` connections with `openers` connecting at once (so a burst never overflows the
// daemon's listen backlog of 128), bounded by `limit`.
task<bool> open_all(address to, int count, int openers, open_tally& t, netloop::duration limit) {
    for (int w = 0; w < openers; ++w) netloop::spawn(open_and_echo(to, w, openers, count, t));
    auto finished = [&] { return t.finished_openers == openers; };
    co_return co_await eventually(finished, limit);
}

}  // namespace

// The client is this test process; the server is samples/daemon in its own process, both with
// RLIMIT_NOFILE raised to the hard limit (each needs one fd per connection). The daemon's
// handler holds a 16 KiB array in its coroutine frame, of which only the pages a connection
// touches count in RSS (kernel socket memory does not count). Measured (Debian 12, 2 CPUs):
// g++ 12 -O2 about 7.5 KiB per connection (10,000 connections add ~74 MiB); the bound of
// 16 KiB leaves a margin of 2 and fails if a connection costs a second 16 KiB buffer or its
// whole frame. Under ASan+UBSan (clang 14) redzones and shadow memory raise it to ~20 KiB, so
// there the bound is 40 KiB. `scale_test -s` prints the figures (CAPTUREd values).
TEST_CASE(
    "10,000 concurrent connections each echo through samples/daemon, costing it less than "
    "16 KiB of RSS each",
    "[scale]") {
    netloop::test::raise_nofile_limit();
    constexpr int wanted = 10000;
    const long bound_bytes = scaled(16L << 10, 40L << 10);
    // Each connection takes one fd here and one in the daemon; keep 256 for everything else.
    const int count =
        static_cast<int>(std::min<std::uint64_t>(wanted, netloop::test::nofile_limit() - 256));
    CAPTURE(wanted, count, netloop::test::nofile_limit());
    REQUIRE(count >= wanted / 2);
    daemon_process daemon({}, netloop::test::raise_nofile_limit);
    REQUIRE(daemon.port() != 0);
    struct result {
        bool warm_opened = false;
        open_tally warm;
        std::optional<daemon_stats> warm_closed;
        long rss_before = 0;
        bool opened = false;
        open_tally all;
        std::optional<daemon_stats> while_open;
        long rss_after = 0;
        std::optional<daemon_stats> last;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = daemon.at();
            // A warm-up round opens and closes 500 connections, so what the daemon keeps for
            // reuse (allocator arenas, Asio's descriptor states) is in the baseline.
            r.warm_opened = co_await open_all(to, 500, 32, r.warm, 60s);
            r.warm.open.clear();
            auto none = [](const daemon_stats& s) { return s.active == 0; };
            r.warm_closed = co_await daemon.stats_until(none, 30s);
            r.rss_before = netloop::test::rss_kib(daemon.pid());

            r.opened = co_await open_all(to, count, 64, r.all, 240s);
            auto everyone = [&](const daemon_stats& s) {
                return s.active >= static_cast<std::uint64_t>(count);
            };
            r.while_open = co_await daemon.stats_until(everyone, 30s);
            r.rss_after = netloop::test::rss_kib(daemon.pid());

            r.all.open.clear();
            r.last = co_await daemon.stats_until(none, 60s);
            co_return r;
        },
        280s);
    CHECK(r.warm_opened);
    CHECK(r.warm.exact == 500);
    REQUIRE(r.warm_closed);
    CHECK(r.warm_closed->active == 0);
    CHECK(r.opened);
    CAPTURE(r.all.failures);
    CHECK(r.all.failed == 0);
    CHECK(r.all.exact == count);
    REQUIRE(r.while_open);
    CHECK(r.while_open->active == static_cast<std::uint64_t>(count));
    CHECK(r.while_open->peak_active == static_cast<std::uint64_t>(count));
    long growth_kib = r.rss_after - r.rss_before;
    long per_connection_bytes = growth_kib * 1024 / count;
    CAPTURE(r.rss_before, r.rss_after, growth_kib, per_connection_bytes, bound_bytes);
    CHECK(r.rss_before > 0);
    CHECK(per_connection_bytes < bound_bytes);
    REQUIRE(r.last);
    CHECK(r.last->active == 0);
    daemon.process().signal(SIGTERM);
    CAPTURE(daemon.log());
    CHECK(daemon.process().exited_with(0, 30s));
}
