// SPDX-License-Identifier: MIT
// Soak: mixed load on samples/daemon with RSS and fds sampled each second; SIGTERM under load.
#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
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
using netloop::errc;
using netloop::task;
using netloop::test::daemon_process;
using netloop::test::daemon_stats;
using netloop::test::eventually;
using netloop::test::kind_of;
using netloop::test::pattern;
using netloop::test::read_n;
using netloop::test::run_bounded;

namespace {

using steady = std::chrono::steady_clock;

// NETLOOP_SOAK_SECONDS, else 60 (20 under a sanitizer).
int soak_seconds() {
    const char* text = std::getenv("NETLOOP_SOAK_SECONDS");
    int value = text != nullptr ? std::atoi(text) : 0;
    return value > 0 ? value : netloop::test::scaled(60, 20);
}

struct soak_tally {
    std::uint64_t sessions = 0;
    std::uint64_t echoes = 0;
    std::uint64_t exact = 0;
    std::uint64_t resets = 0;
    std::uint64_t idles_cut = 0;
    std::uint64_t quick_closes = 0;
    std::uint64_t zombies = 0;
    // Cut by the daemon but never closed here: only the daemon's linger bound frees its end.
    std::vector<netloop::connection> held;
    std::vector<std::string> failures;
    int workers_done = 0;
};

// One worker of the soak: until `until`, picks a session at random — echo 1-8 messages of up to
// 16 KiB (half of all sessions), connect-send-reset, idle until the daemon's idle timeout cuts
// it, the same but never closing afterwards (a peer that hangs), or connect and close at once.
task<> soak_worker(address to, std::uint32_t seed, steady::time_point until, soak_tally& t) {
    std::mt19937 rng(seed);
    auto between = [&rng](std::size_t lo, std::size_t hi) {
        return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
    };
    while (steady::now() < until) {
        auto pick = between(0, 9);
        ++t.sessions;
        try {
            auto c = co_await netloop::connect(to, 10s);
            if (pick < 5) {
                auto rounds = between(1, 8);
                for (std::size_t i = 0; i < rounds; ++i) {
                    auto size = between(1, std::size_t{16} << 10);
                    auto msg = pattern(size, static_cast<unsigned>(rng()));
                    co_await c.write(msg, 10s);
                    auto back = co_await read_n(c, msg.size(), 10s);
                    ++t.echoes;
                    t.exact += back == msg ? 1 : 0;
                }
                c.close();
            } else if (pick < 7) {
                auto size = between(1, std::size_t{16} << 10);
                auto msg = pattern(size, static_cast<unsigned>(rng()));
                co_await c.write(msg, 10s);
                c.abort();
                ++t.resets;
            } else if (pick < 9) {
                std::array<std::byte, 1> buf;
                auto end = co_await kind_of(c.read(buf, 15s));  // the daemon's 1 s cuts it
                if (end != errc::connection_closed) {
                    t.failures.push_back("idle session ended by errc " +
                                         std::to_string(static_cast<int>(end)));
                }
                if (between(0, 1) == 0) {
                    ++t.idles_cut;
                } else {
                    t.held.push_back(std::move(c));
                    ++t.zombies;
                }
            } else {
                c.close();
                ++t.quick_closes;
            }
        } catch (const std::exception& e) {
            if (t.failures.size() < 20) t.failures.push_back(e.what());
        }
    }
    ++t.workers_done;
}

struct sample {
    long rss_kib = 0;
    long fds = 0;
};

// Every second until `stop`: the daemon's RSS and open fds.
task<> sample_every_second(pid_t pid, const bool& stop, std::vector<sample>& out) {
    asio::steady_timer tick(co_await asio::this_coro::executor);
    auto next = steady::now();
    while (!stop) {
        out.push_back({netloop::test::rss_kib(pid), netloop::test::fd_count(pid)});
        next += 1s;
        tick.expires_at(next);
        asio::error_code ignored;
        co_await tick.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        // Cancelled when run()'s coroutine ends, whose frame holds `stop` and `out`: touch
        // neither after that.
        auto state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none) co_return;
    }
}

}  // namespace

// Guards the linger bound in lib/connection.cpp (linger(): the `bound` timer's
// `c->socket.cancel(ignored)` after linger_timeout): a closing connection whose peer never
// closes (the "zombie" sessions here, cut by the idle timeout and then held open until the end)
// gives its fd back after 2 s; and, over time, that every path out of a connection frees its
// fd and memory. The fd count must return to its baseline while the zombies are still held.
// Verified: with that cancel removed, the daemon keeps one fd per zombie and this test fails.
// RSS margin: at most 4 MiB from the 10-second sample to the largest later one (measured in the
// plain build: flat to within ~100 KiB). Under ASan the daemon runs with a 16 MiB quarantine
// (small_quarantine_env(): freed memory is held back up to that size, which is not a leak) and
// the margin is 8 MiB (measured: ~600 KiB); LeakSanitizer checks the daemon at exit (exit 0).
TEST_CASE(
    "a soak of mixed load on samples/daemon leaks no fd (the count returns to its baseline) and "
    "its RSS stops growing after the first 10 s",
    "[soak]") {
    const int seconds = soak_seconds();
    constexpr int workers = 64;
    const long margin_kib = netloop::test::scaled(4L << 10, 8L << 10);
    daemon_process daemon({"--idle-timeout", "1"}, nullptr, netloop::test::small_quarantine_env());
    REQUIRE(daemon.port() != 0);
    struct result {
        bool warm_exact = false;
        std::optional<daemon_stats> warm;
        long fds_baseline = 0;
        std::vector<sample> samples;
        soak_tally load;
        bool workers_ended = false;
        std::optional<daemon_stats> last;
        bool fds_back = false;
        long fds_end = 0;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = daemon.at();
            {
                auto c = co_await netloop::connect(to, 10s);
                auto msg = pattern(1000, 1);
                co_await c.write(msg, 10s);
                auto back = co_await read_n(c, msg.size(), 10s);
                r.warm_exact = back == msg;
            }
            auto none = [](const daemon_stats& s) { return s.active == 0; };
            r.warm = co_await daemon.stats_until(none, 20s);
            r.fds_baseline = netloop::test::fd_count(daemon.pid());

            bool stop_sampling = false;
            netloop::spawn(sample_every_second(daemon.pid(), stop_sampling, r.samples));
            auto until = steady::now() + std::chrono::seconds(seconds);
            for (int w = 0; w < workers; ++w) {
                netloop::spawn(
                    soak_worker(to, 0x50a4 + static_cast<std::uint32_t>(w), until, r.load));
            }
            auto ended = [&] { return r.load.workers_done == workers; };
            r.workers_ended = co_await eventually(ended, std::chrono::seconds(seconds + 60));
            stop_sampling = true;
            r.last = co_await daemon.stats_until(none, 30s);
            auto fds_back = [&] {
                r.fds_end = netloop::test::fd_count(daemon.pid());
                return r.fds_end == r.fds_baseline;
            };
            r.fds_back = co_await eventually(fds_back, 30s);
            r.load.held.clear();  // the zombies go only now, after the fd count was checked
            co_return r;
        },
        std::chrono::seconds(seconds + 180));
    CHECK(r.warm_exact);
    REQUIRE(r.warm);
    CHECK(r.fds_baseline > 0);
    CHECK(r.workers_ended);
    CAPTURE(r.load.sessions, r.load.echoes, r.load.resets, r.load.idles_cut, r.load.zombies,
            r.load.quick_closes);
    CAPTURE(r.load.failures);
    CHECK(r.load.failures.empty());
    CHECK(r.load.echoes > 0);
    CHECK(r.load.exact == r.load.echoes);
    CHECK(r.load.zombies > 0);
    REQUIRE(r.last);
    CHECK(r.last->active == 0);
    CAPTURE(r.fds_baseline, r.fds_end);
    CHECK(r.fds_back);

    std::vector<long> rss;
    std::vector<long> fds;
    for (const auto& s : r.samples) {
        rss.push_back(s.rss_kib);
        fds.push_back(s.fds);
    }
    CAPTURE(rss, fds);
    REQUIRE(r.samples.size() >= static_cast<std::size_t>(seconds));
    long at_10s = r.samples[std::min<std::size_t>(10, r.samples.size() - 1)].rss_kib;
    long max_after = at_10s;
    for (std::size_t i = 10; i < r.samples.size(); ++i) {
        max_after = std::max(max_after, r.samples[i].rss_kib);
    }
    CAPTURE(at_10s, max_after, margin_kib);
    CHECK(max_after - at_10s <= margin_kib);
    daemon.process().signal(SIGTERM);
    CAPTURE(daemon.log());
    CHECK(daemon.process().exited_with(0, 30s));
}

namespace {

// A client's byte stream: byte `i` of client `id`, never the same run for two clients.
std::byte stream_byte(unsigned id, std::uint64_t i) {
    return static_cast<std::byte>((i * 7 + id * 13 + i / 251) & 0xff);
}

struct echo_client {
    std::uint64_t sent = 0;
    std::uint64_t received = 0;
    std::uint64_t mismatches = 0;
    errc end{};        // how the reading side ended
    errc write_end{};  // how the writing side ended (errc{}: it stopped after the EOF; a write
                       // may also fail once the daemon has exited)
    std::string failure;
    bool reading_done = false;
    bool done = false;
};

// The writing half of a streaming client: 16 KiB chunks of its stream, at most 256 KiB ahead of
// what came back, until the reading half has ended; sets `finished` at the end.
task<> stream_out(std::shared_ptr<netloop::connection> c, unsigned id, echo_client& st,
                  std::shared_ptr<bool> finished) {
    std::vector<std::byte> out(std::size_t{16} << 10);
    constexpr std::uint64_t window = std::uint64_t{256} << 10;
    auto room = [&] { return st.reading_done || st.sent - st.received < window; };
    try {
        while (!st.reading_done) {
            if (!room()) {
                (void)co_await eventually(room, 10s);
                continue;
            }
            for (auto& b : out) b = stream_byte(id, st.sent++);
            auto wrote = co_await kind_of(c->write(out, 10s));
            if (wrote != errc{}) {
                st.write_end = wrote;
                break;
            }
        }
    } catch (const std::exception& e) {
        st.failure = e.what();
    }
    *finished = true;
}

// How a streaming client reads: `chunk` bytes per read, `pause` between reads (its pace), and
// SO_RCVBUF (0: the kernel's autotuning).
struct read_pace {
    std::size_t chunk = 16384;
    netloop::duration pause = netloop::duration::zero();
    int receive_buffer = 0;
};

// Streams its bytes through the echo server in both directions at once (a writer task, and
// reading here at `pace`) until the daemon ends the connection; checks every byte that comes
// back against what was sent, and records how it ended.
task<> echo_until_cut(address to, unsigned id, read_pace pace, echo_client& st) {
    try {
        auto connected = co_await netloop::connect(to, 10s);
        // Shared with the writer task, which may outlive this one if the test is cut short.
        auto c = std::make_shared<netloop::connection>(std::move(connected));
        if (pace.receive_buffer > 0) {
            c->socket().set_option(asio::socket_base::receive_buffer_size(pace.receive_buffer));
        }
        auto writer_done = std::make_shared<bool>(false);
        netloop::spawn(stream_out(c, id, st, writer_done));
        std::vector<std::byte> in(pace.chunk);
        for (;;) {
            std::size_t n = 0;
            try {
                n = co_await c->read(in, 10s);
            } catch (const netloop::error& e) {
                st.end = e.kind();
                break;
            }
            for (std::size_t i = 0; i < n; ++i) {
                st.mismatches += in[i] == stream_byte(id, st.received + i) ? 0 : 1;
            }
            st.received += n;
            if (pace.pause > netloop::duration::zero()) {
                co_await netloop::test::sleep_for(pace.pause);  // the client's pace
            }
        }
        st.reading_done = true;
        auto writer_ended = [&] { return *writer_done; };
        (void)co_await eventually(writer_ended, 20s);
        c->close();
    } catch (const std::exception& e) {
        st.failure = e.what();
    }
    st.done = true;
}

}  // namespace

// Guards the drain deadline (lib/serve.cpp drain_share(): `s->handlers.cancel_all();` once
// drain_timeout has passed): clients that stream without end are cut, and the daemon exits 0
// within drain_timeout (2 s) + 1 s of SIGTERM, the bound. Verified: with that line
// removed the daemon never exits and this test fails. It also checks that nothing is lost: the
// daemon's final stats line says how many bytes its write() calls accepted, and the clients
// together received exactly that many, each in order, then EOF. These clients read as fast as
// they can, so the daemon's send queues are usually empty when it exits; the next test makes
// the loss it can suffer deterministic (this one saw it in 1 of ~30 runs before that test
// existed).
TEST_CASE(
    "SIGTERM while 200 clients are mid-echo: each receives every byte the daemon echoed, then "
    "EOF, and the daemon exits 0 within drain_timeout + 1 s",
    "[soak][shutdown]") {
    constexpr int client_count = 200;
    constexpr auto drain = 2s;
    daemon_process daemon({"--drain-timeout", "2"});
    REQUIRE(daemon.port() != 0);
    struct result {
        std::array<echo_client, client_count> clients;
        bool all_mid_echo = false;
        bool exited = false;
        steady::duration term_to_exit{};
        bool clients_done = false;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = daemon.at();
            for (int i = 0; i < client_count; ++i) {
                netloop::spawn(echo_until_cut(to, static_cast<unsigned>(i), {},
                                              r.clients[static_cast<std::size_t>(i)]));
            }
            auto mid_echo = [&] {
                return std::all_of(r.clients.begin(), r.clients.end(), [](const echo_client& c) {
                    return c.received >= (std::uint64_t{64} << 10) || c.done;
                });
            };
            r.all_mid_echo = co_await eventually(mid_echo, 60s);
            auto term = steady::now();
            daemon.process().signal(SIGTERM);
            auto exited = [&] { return daemon.process().wait(0ms).has_value(); };
            r.exited = co_await eventually(exited, drain + 20s);
            r.term_to_exit = steady::now() - term;
            auto done = [&] {
                return std::all_of(r.clients.begin(), r.clients.end(),
                                   [](const echo_client& c) { return c.done; });
            };
            r.clients_done = co_await eventually(done, 30s);
            co_return r;
        },
        150s);
    CHECK(r.all_mid_echo);
    REQUIRE(r.exited);
    auto log = daemon.log();
    CAPTURE(log);
    CHECK(daemon.process().exited_with(0, 0ms));
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r.term_to_exit).count();
    CAPTURE(ms);
    CHECK(r.term_to_exit <= drain + 1s);
    CHECK(r.clients_done);
    std::uint64_t received = 0;
    for (const auto& c : r.clients) {
        CAPTURE(c.failure, c.sent, c.received, static_cast<int>(c.end),
                static_cast<int>(c.write_end));
        CHECK(c.failure.empty());
        CHECK(c.received >= (std::uint64_t{64} << 10));
        CHECK(c.mismatches == 0);
        CHECK(c.end == errc::connection_closed);
        received += c.received;
    }
    auto stats = netloop::test::stats_lines(log);
    REQUIRE(!stats.empty());  // the daemon logs its stats after the drain
    CAPTURE(stats.back().bytes_written, stats.back().bytes_read, received);
    CHECK(stats.back().active == 0);
    CHECK(stats.back().bytes_written == received);
}

// The same promise made deterministic: four clients stream while reading at a steady 400 KB/s
// each (4 KiB per 10 ms, a 64 KiB receive buffer), so when the drain cuts them the daemon's send
// queues still hold bytes its write() accepted, and input the daemon never read keeps arriving.
// Each connection's linger (shut down the write side, discard input until the peer closes, at
// most linger_timeout = 2 s) gives a client ~800 KB of reading time, more than its queue holds.
// Guards that those lingering closes run to their end before the process exits: lib/connection.cpp
// linger() starts with `co_await asio::this_coro::throw_if_cancelled(false);` and binds its read
// to an empty cancellation slot, so run()'s end (lib/loop.cpp run_task: `l.cancel_spawned()`)
// does not cut it short. Verified: on the code before commit acd56fd, where the linger broke off
// when cancelled, the socket was closed with unread input — a reset that discards the send
// queue — and this test failed in every run (the clients got ~70% of the bytes the daemon wrote,
// and still saw a clean EOF: the writer's failing send consumes the socket's ECONNRESET).
TEST_CASE(
    "clients still reading when the drain cuts them receive every byte the daemon's write() "
    "accepted before it exits",
    "[soak][shutdown]") {
    constexpr int client_count = 4;
    daemon_process daemon({"--drain-timeout", "0.5"});
    REQUIRE(daemon.port() != 0);
    struct result {
        std::array<echo_client, client_count> clients;
        bool streaming = false;
        bool exited = false;
        bool clients_done = false;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = daemon.at();
            read_pace pace{.chunk = 4096, .pause = 10ms, .receive_buffer = 64 << 10};
            for (int i = 0; i < client_count; ++i) {
                netloop::spawn(echo_until_cut(to, static_cast<unsigned>(i), pace,
                                              r.clients[static_cast<std::size_t>(i)]));
            }
            auto streaming = [&] {
                return std::all_of(r.clients.begin(), r.clients.end(), [](const echo_client& c) {
                    return c.received >= (std::uint64_t{128} << 10) || c.done;
                });
            };
            r.streaming = co_await eventually(streaming, 30s);
            daemon.process().signal(SIGTERM);
            auto exited = [&] { return daemon.process().wait(0ms).has_value(); };
            r.exited = co_await eventually(exited, 30s);
            auto done = [&] {
                return std::all_of(r.clients.begin(), r.clients.end(),
                                   [](const echo_client& c) { return c.done; });
            };
            r.clients_done = co_await eventually(done, 30s);
            co_return r;
        },
        120s);
    CHECK(r.streaming);
    REQUIRE(r.exited);
    auto log = daemon.log();
    CAPTURE(log);
    CHECK(daemon.process().exited_with(0, 0ms));
    CHECK(r.clients_done);
    std::uint64_t received = 0;
    for (const auto& c : r.clients) {
        CAPTURE(c.failure, c.sent, c.received, static_cast<int>(c.end),
                static_cast<int>(c.write_end));
        CHECK(c.failure.empty());
        CHECK(c.mismatches == 0);
        CHECK(c.end == errc::connection_closed);
        received += c.received;
    }
    auto stats = netloop::test::stats_lines(log);
    REQUIRE(!stats.empty());
    CAPTURE(stats.back().bytes_written, received);
    CHECK(stats.back().bytes_written == received);
}
