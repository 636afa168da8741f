// SPDX-License-Identifier: MIT
// tls_load: echo load over plain TCP or TLS with one client for both, so the two runs differ
// only in TLS. C connections each keep K messages of S bytes in flight for T seconds, and
// every echoed byte is checked. Prints one machine-readable RESULT line.
//
//   tls_load --addr 127.0.0.1:PORT [--tls CA_FILE] [--conns 50] [--size 1024] [--inflight 4]
//            [--duration 3] [--warmup 0.5] [--server-pid PID]
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

struct options {
    std::string addr;
    std::string ca_file;
    int conns = 50;
    std::size_t size = 1024;
    int inflight = 4;
    double duration = 3;
    double warmup = 0.5;
    long server_pid = 0;
};

struct totals {
    int running = 0;
    std::uint64_t messages = 0;
    std::uint64_t errors = 0;
    std::uint64_t corrupt = 0;
};

// The CPU time (user + system) of process `pid` so far, in µs; 0 if unknown.
double cpu_us(long pid) {
    if (pid <= 0) return 0;
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream fields(text.substr(close + 2));
    std::string field;
    unsigned long utime = 0;
    unsigned long stime = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
        if (i == 14) utime = std::stoul(field);
        if (i == 15) stime = std::stoul(field);
    }
    return static_cast<double>(utime + stime) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

netloop::task<> one_connection(const options& o, const netloop::tls_context& tls,
                               const std::atomic<bool>& measuring, clock_type::time_point end,
                               totals& t) {
    try {
        auto at = netloop::address::parse(o.addr);
        std::optional<netloop::connection> conn;
        if (tls) {
            conn.emplace(co_await netloop::connect(at, tls, 10s));
        } else {
            conn.emplace(co_await netloop::connect(at, 10s));
        }
        auto& c = *conn;
        c.set_no_delay(true);
        std::vector<std::byte> batch(o.size * static_cast<std::size_t>(o.inflight));
        for (std::size_t i = 0; i < batch.size(); ++i) batch[i] = static_cast<std::byte>(i * 7);
        std::vector<std::byte> back(batch.size());
        while (clock_type::now() < end) {
            // Write and read side by side: a batch larger than the socket buffers would
            // otherwise deadlock (the server blocks writing to a client that is still writing).
            bool written = false;
            bool write_failed = false;
            netloop::spawn([](netloop::connection& conn, std::span<const std::byte> bytes,
                              bool& done, bool& failed) -> netloop::task<> {
                try {
                    co_await conn.write(bytes, 10s);
                } catch (const netloop::error& e) {
                    std::fprintf(stderr, "tls_load: %s\n", e.what());
                    failed = true;
                }
                done = true;
            }(c, batch, written, write_failed));
            co_await c.read_exactly(back, 10s);
            while (!written)
                co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
            if (write_failed) throw netloop::error(netloop::errc::write_failed, "echo batch");
            if (back != batch) ++t.corrupt;
            if (measuring.load(std::memory_order_relaxed)) {
                t.messages += static_cast<std::uint64_t>(o.inflight);
            }
        }
    } catch (const netloop::error& e) {
        ++t.errors;
        std::fprintf(stderr, "tls_load: %s\n", e.what());
    }
    --t.running;
}

double number(std::string_view flag, std::string_view text) {
    double v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || v < 0) {
        throw std::invalid_argument(std::string(flag) + " needs a number");
    }
    return v;
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string_view flag = argv[i];
        std::string_view value = argv[i + 1];
        if (flag == "--addr") {
            o.addr = value;
        } else if (flag == "--tls") {
            o.ca_file = value;
        } else if (flag == "--conns") {
            o.conns = static_cast<int>(number(flag, value));
        } else if (flag == "--size") {
            o.size = static_cast<std::size_t>(number(flag, value));
        } else if (flag == "--inflight") {
            o.inflight = static_cast<int>(number(flag, value));
        } else if (flag == "--duration") {
            o.duration = number(flag, value);
        } else if (flag == "--warmup") {
            o.warmup = number(flag, value);
        } else if (flag == "--server-pid") {
            o.server_pid = static_cast<long>(number(flag, value));
        } else {
            throw std::invalid_argument("unknown flag " + std::string(flag));
        }
    }
    if (o.addr.empty() || o.conns < 1 || o.size < 1 || o.inflight < 1) {
        throw std::invalid_argument("--addr is required; counts are at least 1");
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tls_load: %s\n", e.what());
        return 2;
    }
    netloop::tls_context tls;
    if (!o.ca_file.empty()) {
        tls = netloop::tls_context::client();
        tls.trust(o.ca_file);
    }
    totals t;
    std::atomic<bool> measuring{false};
    double cpu_start = 0;
    double cpu_end = 0;
    clock_type::time_point measure_start;
    clock_type::time_point measure_end;
    // A failure (the server gone, say) is one line on stderr and status 1, with no RESULT line.
    int status = netloop::run([&]() -> netloop::task<> {
        auto start = clock_type::now();
        auto window_start = start + std::chrono::duration_cast<clock_type::duration>(
                                        std::chrono::duration<double>(o.warmup));
        auto end = window_start + std::chrono::duration_cast<clock_type::duration>(
                                      std::chrono::duration<double>(o.duration));
        t.running = o.conns;
        for (int i = 0; i < o.conns; ++i) netloop::spawn(one_connection(o, tls, measuring, end, t));
        asio::steady_timer timer(co_await asio::this_coro::executor, window_start);
        co_await timer.async_wait(asio::use_awaitable);
        measuring = true;
        measure_start = clock_type::now();
        cpu_start = cpu_us(o.server_pid);
        timer.expires_at(end);
        co_await timer.async_wait(asio::use_awaitable);
        measure_end = clock_type::now();
        cpu_end = cpu_us(o.server_pid);
        measuring = false;
        // Every connection finishes its batch (each step is bounded by its 10 s timeout).
        while (t.running > 0) {
            timer.expires_after(1ms);
            co_await timer.async_wait(asio::use_awaitable);
        }
    });
    if (status != 0) return status;
    double seconds = std::chrono::duration<double>(measure_end - measure_start).count();
    double server_cpu = cpu_end - cpu_start;
    double msgs_per_s = seconds > 0 ? static_cast<double>(t.messages) / seconds : 0;
    std::printf(
        "RESULT mode=%s conns=%d size=%zu inflight=%d msgs_per_s=%.0f mb_per_s=%.2f "
        "server_cpu_us_per_msg=%.3f errors=%llu corrupt=%llu\n",
        tls ? "tls" : "plain", o.conns, o.size, o.inflight, msgs_per_s,
        msgs_per_s * static_cast<double>(o.size) / 1e6,
        t.messages > 0 && o.server_pid > 0 ? server_cpu / static_cast<double>(t.messages) : 0.0,
        static_cast<unsigned long long>(t.errors), static_cast<unsigned long long>(t.corrupt));
    return t.errors == 0 && t.corrupt == 0 ? 0 : 1;
}
