// SPDX-License-Identifier: MIT
// samples/daemon as a real process: flags validated, echo, drain on SIGTERM, a second SIGTERM.
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/process.hpp"
#include "support/promtool.hpp"
#include "support/serve_helpers.hpp"
#include "support/temp_file.hpp"
#if NETLOOP_HAS_TLS
#include "support/test_certs.hpp"
#endif

using namespace std::chrono_literals;
using netloop::address;
using netloop::errc;
using netloop::task;
using netloop::test::child_process;
using netloop::test::echo_once;
using netloop::test::eventually;
using netloop::test::failure_of;
using netloop::test::kind_of;
using netloop::test::pattern;
using netloop::test::read_n;
using netloop::test::run_bounded;

namespace {

using steady = std::chrono::steady_clock;
using netloop::test::temp_file;

// The daemon on 127.0.0.1:0 with `flags`, its stderr in `err`.
std::vector<std::string> daemon_args(const std::vector<std::string>& flags) {
    std::vector<std::string> argv{netloop::test::sample_path("daemon"), "127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
}

// Connects to `to` until the connect is refused (the daemon has stopped listening), for at most
// 10 s; a connect that still succeeds is closed at once. True if refused.
task<bool> refused_soon(address to) {
    auto until = steady::now() + 10s;
    while (steady::now() < until) {
        auto [kind, sys] = co_await failure_of(netloop::connect(to, 5s));
        if (kind == errc::connect_failed && sys == ECONNREFUSED) co_return true;
        co_await netloop::test::sleep_for(10ms);
    }
    co_return false;
}

}  // namespace

TEST_CASE("daemon rejects a bad flag or value with exit status 2 and a message naming it",
          "[samples][daemon]") {
    struct bad_usage {
        std::vector<std::string> args;
        std::string named;  // what stderr must mention
    };
    const std::vector<bad_usage> cases{
        {{"127.0.0.1:0", "--max-connections", "-1"}, "--max-connections"},
        {{"127.0.0.1:0", "--idle-timeout", "x"}, "--idle-timeout"},
        {{"127.0.0.1:0", "--bogus", "1"}, "--bogus"},
        {{"127.0.0.1:0", "--on-limit", "maybe"}, "maybe"},
        {{"300.1.1.1:80"}, "300.1.1.1:80"},
        {{"127.0.0.1:0", "--max-connections-per-ip", "0"}, "--max-connections-per-ip"},
        {{"127.0.0.1:0", "--metrics", "localhost"}, "localhost"},
        {{"127.0.0.1:0", "--proxy-protocol", "v3"}, "v3"},
        {{"127.0.0.1:0", "--proxy-from", "10.1.2.3/8"}, "--proxy-from"},
    };
    auto index = GENERATE(range(0, 7));
    const auto& c = cases[static_cast<std::size_t>(index)];
    temp_file err;
    std::vector<std::string> argv{netloop::test::sample_path("daemon")};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    child_process daemon(argv, {}, err.path());
    auto status = daemon.wait(10s);
    auto text = err.contents();
    CAPTURE(c.args, text);
    REQUIRE(status);
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 2);
    CHECK(text.find(c.named) != std::string::npos);
    CHECK(text.find("usage:") != std::string::npos);
}

TEST_CASE("daemon --help prints every flag to stdout and exits 0", "[samples][daemon]") {
    child_process daemon({netloop::test::sample_path("daemon"), "--help"});
    std::string text;
    while (auto line = daemon.read_line(10s)) text += *line + "\n";
    CAPTURE(text);
    CHECK(daemon.exited_with(0, 10s));
    for (const char* flag : {"--unix", "--tls-cert", "--max-connections ", "--on-limit",
                             "--max-connections-per-ip", "--idle-timeout", "--drain-timeout",
                             "--threads", "--balance", "--metrics", "--log-level"}) {
        CAPTURE(flag);
        CHECK(text.find(flag) != std::string::npos);
    }
}

TEST_CASE("daemon echoes bytes exactly and exits 0 on SIGTERM", "[samples][daemon]") {
    temp_file err;
    child_process daemon(daemon_args({}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    auto sent = pattern(std::size_t{256} << 10, 4);
    auto received = run_bounded([&]() -> task<std::vector<std::byte>> {
        auto c = co_await netloop::connect(address::ipv4("127.0.0.1", port), 5s);
        netloop::spawn([](netloop::connection& conn, std::span<const std::byte> b) -> task<> {
            co_await conn.write(b, 10s);
        }(c, sent));
        co_return co_await read_n(c, sent.size());
    });
    bool byte_exact = received == sent;
    CHECK(byte_exact);
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "on SIGTERM the daemon stops accepting but lets a client in mid-echo finish, then "
    "exits 0",
    "[samples][daemon]") {
    temp_file err;
    child_process daemon(daemon_args({}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    constexpr std::size_t half = std::size_t{1} << 20;
    auto sent = pattern(2 * half, 6);
    struct result {
        bool refused = false;
        bool running_after_echo = false;
        bool byte_exact = false;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto to = address::ipv4("127.0.0.1", port);
        auto c = co_await netloop::connect(to, 5s);
        auto first = std::span<const std::byte>(sent).first(half);
        auto second = std::span<const std::byte>(sent).subspan(half);
        co_await c.write(first, 10s);
        auto received = co_await read_n(c, half / 2);  // half of the first half is in flight
        daemon.signal(SIGTERM);
        r.refused = co_await refused_soon(to);
        co_await c.write(second, 10s);
        auto rest = co_await read_n(c, sent.size() - received.size());
        received.insert(received.end(), rest.begin(), rest.end());
        r.byte_exact = received == sent;
        r.running_after_echo = !daemon.wait(0ms);
        c.close();
        co_return r;
    });
    CAPTURE(err.contents());
    CHECK(r.refused);
    CHECK(r.byte_exact);
    CHECK(r.running_after_echo);
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE("with --drain-timeout 0.5 the daemon cuts a client that never closes and exits 0",
          "[samples][daemon]") {
    temp_file err;
    child_process daemon(daemon_args({"--drain-timeout", "0.5"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    struct result {
        std::string echo;
        errc client_end{};
        bool exited = false;
        steady::duration signal_to_exit{};
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto c = co_await netloop::connect(address::ipv4("127.0.0.1", port), 5s);
        r.echo = co_await echo_once(c, "hi");
        auto signalled = steady::now();
        daemon.signal(SIGTERM);
        std::array<std::byte, 1> buf;
        r.client_end = co_await kind_of(c.read(buf, 10s));  // still connected, never closes
        auto exited = [&] { return daemon.wait(0ms).has_value(); };
        r.exited = co_await eventually(exited, 10s);
        r.signal_to_exit = steady::now() - signalled;
        co_return r;
    });
    CAPTURE(err.contents());
    CHECK(r.echo == "hi");
    CHECK(r.client_end == errc::connection_closed);
    REQUIRE(r.exited);
    CHECK(daemon.exited_with(0, 0ms));
    CAPTURE(std::chrono::duration_cast<std::chrono::milliseconds>(r.signal_to_exit).count());
    CHECK(r.signal_to_exit < 5500ms);  // a generous bound on the 0.5 s drain
}

TEST_CASE("daemon --max-connections 1 --on-limit reject closes a second client at once",
          "[samples][daemon]") {
    temp_file err;
    child_process daemon(daemon_args({"--max-connections", "1", "--on-limit", "reject"}), {},
                         err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    struct result {
        std::string first_echo;
        errc second_end{};
        std::string first_again;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto to = address::ipv4("127.0.0.1", port);
        auto first = co_await netloop::connect(to, 5s);
        r.first_echo = co_await echo_once(first, "one");
        auto second = co_await netloop::connect(to, 5s);
        std::array<std::byte, 1> buf;
        r.second_end = co_await kind_of(second.read(buf, 5s));
        r.first_again = co_await echo_once(first, "still one");
        co_return r;
    });
    CHECK(r.first_echo == "one");
    CHECK(r.second_end == errc::connection_closed);
    CHECK(r.first_again == "still one");
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "when the drain timeout cuts a client that does not read, the daemon still delivers "
    "every byte it echoed, then EOF, never a reset, even as it exits",
    "[samples][daemon]") {
    // The client writes 64 MiB without reading until its write times out: the echo stalls with
    // the client's input unread. Closing with unread input resets the connection and drops what
    // the daemon already wrote, unless the close lingers, also while the process ends. (Nothing
    // of the client's is pending when the reset would come, so its read reports it.)
    temp_file err;
    child_process daemon(daemon_args({"--drain-timeout", "0.5"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    auto sent = pattern(std::size_t{64} << 20, 10);
    struct result {
        errc write_end{};
        bool exited = false;
        std::vector<std::byte> received;
        errc end{};
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto c = co_await netloop::connect(address::ipv4("127.0.0.1", port), 5s);
        r.write_end = co_await kind_of(c.write(sent, 300ms));
        daemon.signal(SIGTERM);
        auto exited = [&] { return daemon.wait(0ms).has_value(); };
        r.exited = co_await eventually(exited, 15s);
        std::array<std::byte, 65536> buf;
        for (;;) {
            try {
                auto n = co_await c.read(buf, 5s);
                r.received.insert(r.received.end(), buf.begin(), buf.begin() + n);
            } catch (const netloop::error& e) {
                r.end = e.kind();
                break;
            }
        }
        c.close();
        co_return r;
    });
    CAPTURE(err.contents());
    REQUIRE(r.write_end == errc::timeout);  // the echo stalled: the scenario holds
    REQUIRE(r.exited);
    CHECK(daemon.exited_with(0, 0ms));
    CAPTURE(r.received.size());
    CHECK(r.end == errc::connection_closed);
    CHECK(!r.received.empty());
    bool prefix = r.received.size() <= sent.size() &&
                  std::equal(r.received.begin(), r.received.end(), sent.begin());
    CHECK(prefix);
}

#if NETLOOP_HAS_TLS
TEST_CASE(
    "daemon --tls-cert/--tls-key: openssl s_client verifies the certificate, completes a "
    "handshake and round-trips a line",
    "[samples][daemon][tls]") {
    auto version = GENERATE(as<std::string>{}, "-tls1_3", "-tls1_2");
    temp_file cert, key, ca, err, client_out, client_err;
    cert.write(netloop::test::pki().leaf.cert);
    key.write(netloop::test::pki().leaf.key);
    ca.write(netloop::test::pki().ca.cert);
    child_process daemon(daemon_args({"--tls-cert", cert.path(), "--tls-key", key.path()}), {},
                         err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    // s_client sends the line, and its stdin stays open until the echo has come back (at most
    // 10 s); -verify_return_error makes a certificate that does not verify fail the run.
    std::string script =
        "{ printf 'hello over tls\\n'; i=0; while [ $i -lt 200 ] && ! grep -q "
        "'hello over tls' '" +
        client_out.path() +
        "'; do sleep 0.05; "
        "i=$((i+1)); done; } | timeout 20 openssl s_client -connect 127.0.0.1:" +
        std::to_string(port) + " -CAfile '" + ca.path() + "' " + version +
        " -verify_return_error -brief -no_ign_eof > '" + client_out.path() + "' 2> '" +
        client_err.path() + "'";
    child_process client({"/bin/sh", "-c", script});
    CHECK(client.exited_with(0, 30s));
    CAPTURE(client_err.contents());
    CHECK(client_out.contents() == "hello over tls\n");
    CHECK(client_err.contents().find("Verification: OK") != std::string::npos);
    CHECK(client_err.contents().find(version == "-tls1_3" ? "TLSv1.3" : "TLSv1.2") !=
          std::string::npos);
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
    CHECK(err.contents().find("handshake_failures=0") != std::string::npos);
}
#endif

TEST_CASE("daemon --unix serves a Unix socket and removes its file on exit",
          "[samples][daemon][unix]") {
    auto path = (std::filesystem::temp_directory_path() /
                 ("netloop-daemon-" + std::to_string(::getpid()) + ".sock"))
                    .string();
    temp_file err;
    child_process daemon({netloop::test::sample_path("daemon"), "--unix", path}, {}, err.path());
    auto line = daemon.read_line();
    REQUIRE(line.has_value());
    CHECK(*line == "listening on unix:" + path);
    CHECK(std::filesystem::is_socket(path));
    auto echoed = run_bounded([&]() -> task<std::string> {
        auto c = co_await netloop::connect(address::unix_socket(path), 5s);
        co_return co_await echo_once(c, "over a unix socket");
    });
    CHECK(echoed == "over a unix socket");
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
    CHECK_FALSE(std::filesystem::exists(path));
}

namespace {

// Streams 512-byte chunks (one every 5 ms, each echo read back and compared) until `stop`,
// then closes; counts the chunks.
task<> stream_until(netloop::connection c, const bool& stop, std::size_t& chunks, bool& intact,
                    bool& done) {
    try {
        while (!stop) {
            auto msg = netloop::test::text(pattern(512, static_cast<unsigned>(chunks)));
            auto back = co_await echo_once(c, msg);
            intact = intact && back == msg;
            ++chunks;
            co_await netloop::test::sleep_for(5ms);
        }
    } catch (const netloop::error&) {
        intact = false;
    }
    c.close();
    done = true;
}

struct http_reply {
    std::string status_line;
    std::string headers;  // the lines after the status line, CRLF-separated
    std::string body;
    bool length_matches = false;  // Content-Length equals the body's size
};

// Reads what arrives: {errc{}, count}, or {the error's kind, 0} once the peer closed or failed.
task<std::pair<errc, std::size_t>> read_or_end(netloop::connection& c, std::span<std::byte> buf) {
    try {
        auto got = co_await c.read(buf, 10s);
        co_return std::pair{errc{}, got};
    } catch (const netloop::error& e) {
        co_return std::pair{e.kind(), std::size_t{0}};
    }
}

// Sends `request` on a new connection to `to` and reads the reply until the server closes.
task<http_reply> http_exchange(address to, std::string request) {
    auto c = co_await netloop::connect(to, 5s);
    co_await c.write(request, 5s);
    std::string all;
    std::array<std::byte, 4096> buf;
    for (;;) {
        auto [kind, n] = co_await read_or_end(c, buf);
        if (kind != errc{}) break;
        all.append(reinterpret_cast<const char*>(buf.data()), n);
    }
    http_reply r;
    auto head_end = all.find("\r\n\r\n");
    if (head_end == std::string::npos) co_return r;
    auto first = all.find("\r\n");
    r.status_line = all.substr(0, first);
    r.headers = all.substr(first + 2, head_end - first - 2);
    r.body = all.substr(head_end + 4);
    auto at = r.headers.find("Content-Length: ");
    if (at != std::string::npos) {
        r.length_matches = std::stoul(r.headers.substr(at + 16)) == r.body.size();
    }
    co_return r;
}

// The value of the sample named exactly `name` (labels included) in a metrics text, or -1.
long long metric(const std::string& text, const std::string& name) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(name + " ", 0) == 0) return std::stoll(line.substr(name.size() + 1));
    }
    return -1;
}

// The address of the daemon's "metrics on <address>" line (read after "listening on").
std::optional<address> metrics_address(child_process& daemon) {
    auto line = daemon.read_line();
    const std::string prefix = "metrics on ";
    if (!line || line->rfind(prefix, 0) != 0) return std::nullopt;
    return address::parse(line->substr(prefix.size()));
}

}  // namespace

TEST_CASE(
    "on SIGTERM the daemon ends its idle clients at once and exits when its streaming client "
    "stops, long before the drain timeout",
    "[samples][daemon]") {
    temp_file err;
    child_process daemon(daemon_args({"--drain-timeout", "60"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    struct result {
        int idle_closed = 0;
        bool running_after_idle_closed = false;
        std::size_t chunks_after_idle_closed = 0;
        std::size_t chunks_at_stop = 0;
        bool intact = true;
        bool exited = false;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = address::ipv4("127.0.0.1", port);
            std::vector<netloop::connection> idle;
            for (int i = 0; i < 100; ++i) {
                idle.push_back(co_await netloop::connect(to, 5s));
                (void)co_await echo_once(idle.back(), "x");
            }
            bool stop = false;
            std::size_t chunks = 0;
            bool done = false;
            auto streaming = co_await netloop::connect(to, 5s);
            netloop::spawn(stream_until(std::move(streaming), stop, chunks, r.intact, done));
            co_await eventually([&] { return chunks >= 10; }, 10s);
            daemon.signal(SIGTERM);
            std::array<std::byte, 1> buf;
            for (auto& c : idle) {
                auto kind = co_await kind_of(c.read(buf, 10s));
                r.idle_closed += kind == errc::connection_closed ? 1 : 0;
                c.close();
            }
            auto after = chunks;
            // The streaming client keeps its handler, and the daemon, running.
            co_await eventually([&] { return chunks >= after + 20 || done; }, 10s);
            r.chunks_after_idle_closed = chunks - after;
            r.running_after_idle_closed = !daemon.wait(0ms).has_value();
            stop = true;
            co_await eventually([&] { return done; }, 10s);
            r.chunks_at_stop = chunks;
            // The drain has nothing left to wait for: the exit follows, not the 60 s bound.
            r.exited = co_await eventually([&] { return daemon.wait(0ms).has_value(); }, 15s);
            co_return r;
        },
        40s);
    CAPTURE(err.contents());
    CHECK(r.idle_closed == 100);
    CHECK(r.chunks_after_idle_closed >= 20);
    CHECK(r.running_after_idle_closed);
    CHECK(r.intact);
    REQUIRE(r.exited);
    CHECK(daemon.exited_with(0, 0ms));
}

TEST_CASE(
    "a second SIGTERM half a second into the drain cuts a busy client at once: the daemon exits "
    "long before its 30 s linger and 60 s drain_timeout",
    "[samples][daemon]") {
    // A second SIGTERM cuts a handler stuck writing to a client that never reads nor closes: it
    // is inside a reply, so the drain cannot end it as idle. With --linger 30 a lingering close
    // would hold the exit for 30 s and --drain-timeout 60 the drain, so an exit within 5 s shows
    // the force cut and nothing lingered. The 0.5 s between the signals outlasts the drain's
    // first waits: a force lost after them was the bug.
    temp_file err;
    child_process daemon(daemon_args({"--linger", "30", "--drain-timeout", "60"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    struct result {
        bool refused = false;
        bool exited = false;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto to = address::ipv4("127.0.0.1", port);
            auto c = co_await netloop::connect(to, 5s);
            (void)co_await echo_once(c, "hi");
            // Fill both directions' buffers: the handler blocks writing the echo.
            auto flood = pattern(16 << 20, 7);
            (void)co_await kind_of(c.write(flood, 2s));
            daemon.signal(SIGTERM);
            r.refused = co_await refused_soon(to);  // the drain has begun
            co_await netloop::test::sleep_for(500ms);
            daemon.signal(SIGTERM);
            r.exited = co_await eventually([&] { return daemon.wait(0ms).has_value(); }, 5s);
            co_return r;
        },
        30s);
    CAPTURE(err.contents());
    CHECK(r.refused);
    REQUIRE(r.exited);
    CHECK(daemon.exited_with(0, 0ms));
}

TEST_CASE(
    "daemon --metrics serves GET /metrics whose counters equal what the clients did, in a "
    "format promtool accepts",
    "[samples][daemon][metrics]") {
    temp_file err;
    child_process daemon(daemon_args({"--metrics", "127.0.0.1:0"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    auto scrape_at = metrics_address(daemon);
    REQUIRE(scrape_at);
    const std::vector<std::size_t> sizes{1000, 20000, 300000};
    struct result {
        bool all_echoed = true;
        http_reply reply;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto to = address::ipv4("127.0.0.1", port);
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            auto sent = pattern(sizes[i], static_cast<unsigned>(i));
            auto c = co_await netloop::connect(to, 5s);
            co_await c.write(sent, 10s);
            auto back = co_await read_n(c, sent.size());
            r.all_echoed = r.all_echoed && back == sent;
        }  // each client closes here
        // A handler ends once the daemon reads its client's EOF; until then "active" counts it,
        // so scrape until it reads 0 (bounded).
        auto until = steady::now() + 20s;
        for (;;) {
            r.reply =
                co_await http_exchange(*scrape_at, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
            if (metric(r.reply.body, "netloop_connections_active") == 0) break;
            if (steady::now() > until) break;
            co_await netloop::test::sleep_for(5ms);
        }
        co_return r;
    });
    CAPTURE(r.reply.status_line, r.reply.headers, r.reply.body);
    CHECK(r.all_echoed);
    CHECK(r.reply.status_line == "HTTP/1.1 200 OK");
    CHECK(r.reply.headers.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
    CHECK(r.reply.headers.find("Connection: close") != std::string::npos);
    CHECK(r.reply.length_matches);
    long long total = 0;
    for (auto n : sizes) total += static_cast<long long>(n);
    CHECK(metric(r.reply.body, "netloop_connections_accepted_total") == 3);
    CHECK(metric(r.reply.body, "netloop_connections_active") == 0);
    // One client at a time, but a handler may not yet have seen its client's EOF when the
    // next one connects.
    auto peak = metric(r.reply.body, "netloop_connections_peak_active");
    CHECK(peak >= 1);
    CHECK(peak <= 3);
    CHECK(metric(r.reply.body, "netloop_connections_rejected_total{reason=\"limit\"}") == 0);
    CHECK(metric(r.reply.body, "netloop_bytes_read_total") == total);
    CHECK(metric(r.reply.body, "netloop_bytes_written_total") == total);
    CHECK(metric(r.reply.body, "netloop_accept_errors_total") == 0);
    CHECK(metric(r.reply.body, "netloop_tls_handshake_failures_total") == 0);
    CHECK(metric(r.reply.body, "netloop_draining") == 0);
    auto verdict = netloop::test::promtool_check(r.reply.body);
    CAPTURE(verdict.output);
    REQUIRE(verdict.ran);
    CHECK(verdict.exit_code == 0);
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE("daemon --metrics answers other paths 404, other methods 405, garbage 400",
          "[samples][daemon][metrics]") {
    temp_file err;
    child_process daemon(daemon_args({"--metrics", "127.0.0.1:0"}), {}, err.path());
    REQUIRE(daemon.announced_port() != 0);
    auto scrape_at = metrics_address(daemon);
    REQUIRE(scrape_at);
    struct exchange {
        std::string request;
        std::string status_line;
    };
    const std::vector<exchange> cases{
        {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"},
        {"GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"},
        {"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
        {"DELETE /metrics HTTP/1.0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"},
        {"hello\r\n\r\n", "HTTP/1.1 400 Bad Request"},
        {"GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"},
        {"GET /metrics HTTP/1.1\r\n" + std::string(9000, 'x'), "HTTP/1.1 400 Bad Request"},
        {"GET /metrics?name=x HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK"},
    };
    auto replies = run_bounded([&]() -> task<std::vector<http_reply>> {
        std::vector<http_reply> out;
        for (const auto& c : cases) out.push_back(co_await http_exchange(*scrape_at, c.request));
        co_return out;
    });
    for (std::size_t i = 0; i < cases.size(); ++i) {
        CAPTURE(cases[i].request.substr(0, 40), replies[i].headers);
        CHECK(replies[i].status_line == cases[i].status_line);
        CHECK(replies[i].length_matches);
        CHECK(replies[i].headers.find("Connection: close") != std::string::npos);
    }
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "daemon --max-connections-per-ip 1 admits one connection per client address and counts "
    "the one over it as rejected",
    "[samples][daemon]") {
    temp_file err;
    child_process daemon(daemon_args({"--max-connections-per-ip", "1", "--metrics", "127.0.0.1:0"}),
                         {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    auto scrape_at = metrics_address(daemon);
    REQUIRE(scrape_at);
    struct result {
        std::string first_echo;
        errc second_end{};
        std::string other_ip_echo;
        std::string first_again;
        http_reply reply;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        auto to = address::ipv4("127.0.0.1", port);
        auto first = co_await netloop::connect(to, 5s);
        r.first_echo = co_await echo_once(first, "one");
        auto second = co_await netloop::connect(to, 5s);
        std::array<std::byte, 1> buf;
        r.second_end = co_await kind_of(second.read(buf, 5s));
        // Another client address: its own allowance.
        auto other = co_await netloop::test::raw_connect(to, 5s, "127.0.0.2");
        const std::string_view hello = "hello";
        auto wrote = co_await netloop::test::raw_write(other, std::as_bytes(std::span(hello)));
        std::array<std::byte, 5> back{};
        auto read = co_await netloop::test::raw_read(other, back);
        if (!wrote && !read) r.other_ip_echo = netloop::test::text(back);
        r.first_again = co_await echo_once(first, "still one");
        r.reply = co_await http_exchange(*scrape_at, "GET /metrics HTTP/1.1\r\n\r\n");
        co_return r;
    });
    CHECK(r.first_echo == "one");
    CHECK(r.second_end == errc::connection_closed);
    CHECK(r.other_ip_echo == "hello");
    CHECK(r.first_again == "still one");
    CAPTURE(r.reply.body);
    CHECK(metric(r.reply.body, "netloop_connections_accepted_total") == 3);
    CHECK(metric(r.reply.body, "netloop_connections_rejected_total{reason=\"limit\"}") == 1);
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "daemon --metrics gives one client address 4 connections at most: a client that holds many "
    "idle ones does not turn away another's scrape",
    "[samples][daemon][metrics]") {
    temp_file err;
    child_process daemon(daemon_args({"--metrics", "127.0.0.1:0"}), {}, err.path());
    REQUIRE(daemon.announced_port() != 0);
    auto scrape_at = metrics_address(daemon);
    REQUIRE(scrape_at);
    struct result {
        asio::error_code fifth_end;
        http_reply reply;
    };
    auto r = run_bounded([&]() -> task<result> {
        result r;
        // One client (127.0.0.2) opens 20 connections and sends nothing: more than the 16
        // slots. They reach the accept queue before the scrape below.
        std::vector<asio::ip::tcp::socket> idle;
        for (int i = 0; i < 20; ++i) {
            idle.push_back(co_await netloop::test::raw_connect(*scrape_at, 5s, "127.0.0.2"));
        }
        // Its fifth is over its share: closed at once (EOF), not left to the 10 s idle timeout.
        std::array<std::byte, 1> one{};
        r.fifth_end = co_await netloop::test::raw_read(idle[4], one, 5s);
        // Another client (127.0.0.1) still gets its answer.
        r.reply = co_await http_exchange(*scrape_at, "GET /metrics HTTP/1.1\r\n\r\n");
        co_return r;
    });
    CHECK(r.fifth_end == asio::error::eof);
    CHECK(r.reply.status_line == "HTTP/1.1 200 OK");
    CHECK(metric(r.reply.body, "netloop_connections_accepted_total") == 0);
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}
