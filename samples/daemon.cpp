// SPDX-License-Identifier: MIT
// The echo server made production-ready with serve(): limits, idle timeout, drain, logging.
//
//   daemon [host:port] [--unix PATH] [--tls-cert FILE --tls-key FILE]
//          [--max-connections N] [--on-limit pause|reject] [--idle-timeout SECONDS]
//          [--drain-timeout SECONDS] [--threads N] [--balance hand-off|reuse-port]
//          [--log-level trace|debug|info|warn|error|off]
//
// --unix listens on a Unix domain socket (a path, or @name for an abstract one) instead of
// TCP. --tls-cert and --tls-key (PEM: certificate chain, private key) make every connection
// TLS; a client that does not complete its handshake within 10 s is dropped and counted.
//
// Announces "listening on <address>", logs to stderr, drains on SIGINT/SIGTERM and exits 0; a
// second signal cancels the remaining connections at once.
//
// Under systemd: started with LISTEN_FDS (socket activation) it adopts the passed socket and
// never binds; with NOTIFY_SOCKET it reports READY=1 once listening, STOPPING=1 when the drain
// begins, and WATCHDOG=1 keep-alives when WATCHDOG_USEC asks for them. SIGUSR2 restarts without
// dropping a connection: a new copy of the program inherits the listening socket through the
// same LISTEN_FDS protocol, and once it is ready this one stops accepting and drains. SIGUSR1
// logs the server's stats at info level.
#include <charconv>
#include <climits>
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

namespace {

constexpr const char* usage =
    "usage: daemon [host:port] [--unix PATH] [--tls-cert FILE --tls-key FILE]\n"
    "              [--max-connections N] [--on-limit pause|reject]\n"
    "              [--idle-timeout SECONDS] [--drain-timeout SECONDS]\n"
    "              [--threads N] [--balance hand-off|reuse-port]\n"
    "              [--log-level trace|debug|info|warn|error|off]\n";

struct config {
    std::string listen_at = "127.0.0.1:8080";
    std::string unix_path;
    std::string tls_cert;
    std::string tls_key;
    netloop::serve_options serve;
    spdlog::level::level_enum log_level = spdlog::level::info;
};

struct bad_usage {
    std::string message;
};

std::size_t parse_count(std::string_view flag, std::string_view text) {
    std::size_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value == 0) {
        throw bad_usage{std::string(flag) + " needs a positive whole number, not '" +
                        std::string(text) + "'"};
    }
    return value;
}

netloop::duration parse_seconds(std::string_view flag, std::string_view text) {
    double value = -1;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || !(value >= 0) || value > 1e6) {
        throw bad_usage{std::string(flag) + " needs a number of seconds, not '" +
                        std::string(text) + "'"};
    }
    return std::chrono::duration_cast<netloop::duration>(std::chrono::duration<double>(value));
}

config parse(int argc, char** argv) {
    config c;
    bool have_address = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (!arg.starts_with("--")) {
            if (have_address) throw bad_usage{"unexpected argument '" + std::string(arg) + "'"};
            (void)netloop::address::parse(arg);  // reports bad text now, as a usage error
            c.listen_at = arg;
            have_address = true;
            continue;
        }
        if (i + 1 >= argc) throw bad_usage{std::string(arg) + " needs a value"};
        std::string_view value = argv[++i];
        if (arg == "--unix") {
            (void)netloop::address::unix_socket(value);  // reports a bad name now
            c.unix_path = value;
        } else if (arg == "--tls-cert") {
            c.tls_cert = value;
        } else if (arg == "--tls-key") {
            c.tls_key = value;
        } else if (arg == "--max-connections") {
            c.serve.max_connections = parse_count(arg, value);
        } else if (arg == "--on-limit") {
            if (value == "pause") {
                c.serve.on_limit = netloop::limit_policy::pause;
            } else if (value == "reject") {
                c.serve.on_limit = netloop::limit_policy::reject;
            } else {
                throw bad_usage{"--on-limit is pause or reject, not '" + std::string(value) + "'"};
            }
        } else if (arg == "--idle-timeout") {
            c.serve.idle_timeout = parse_seconds(arg, value);
        } else if (arg == "--drain-timeout") {
            c.serve.drain_timeout = parse_seconds(arg, value);
        } else if (arg == "--threads") {
            c.serve.threads = parse_count(arg, value);
        } else if (arg == "--balance") {
            if (value == "hand-off") {
                c.serve.balance = netloop::balance_mode::hand_off;
            } else if (value == "reuse-port") {
                c.serve.balance = netloop::balance_mode::reuse_port;
            } else {
                throw bad_usage{"--balance is hand-off or reuse-port, not '" + std::string(value) +
                                "'"};
            }
        } else if (arg == "--log-level") {
            c.log_level = spdlog::level::from_str(std::string(value));
            if (c.log_level == spdlog::level::off && value != "off") {
                throw bad_usage{"unknown log level '" + std::string(value) + "'"};
            }
        } else {
            throw bad_usage{"unknown flag '" + std::string(arg) + "'"};
        }
    }
    if (c.tls_cert.empty() != c.tls_key.empty()) {
        throw bad_usage{"--tls-cert and --tls-key go together"};
    }
    return c;
}

// Echo until the peer closes; the idle timeout, not the per-call one, ends a silent client.
netloop::task<> echo(netloop::connection conn) {
    // An echo answers each read with one write: without TCP_NODELAY the tail of a large
    // message waits for the peer's delayed ACK (up to 40 ms on Linux).
    conn.set_no_delay(true);
    std::array<std::byte, 16384> buf;
    for (;;) {
        auto n = co_await conn.read(buf, 1h);
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

// The server: the socket systemd passed, or one we listen on.
netloop::server open_server(const config& cfg, const std::shared_ptr<spdlog::logger>& log) {
    netloop::listen_options options;
    if (!cfg.tls_cert.empty())
        options.tls = netloop::tls_context::server(cfg.tls_cert, cfg.tls_key);
    auto activated = netloop::listen_activated(options);
    if (activated.empty()) {
        if (!cfg.unix_path.empty()) {
            return netloop::server::listen(netloop::address::unix_socket(cfg.unix_path), options);
        }
        options.reuse_port = cfg.serve.balance == netloop::balance_mode::reuse_port;
        return netloop::server::listen(netloop::address::parse(cfg.listen_at), options);
    }
    if (activated.size() > 1) log->warn("{} sockets passed; serving the first", activated.size());
    log->info("socket activation: serving the passed socket {}",
              activated.front().local_address().to_string());
    return std::move(activated.front());
}

// On SIGUSR2: start a successor that inherits the socket, then let serve() drain.
netloop::task<> restart_on_sigusr2(netloop::signal_stream signals, netloop::server& server,
                                   std::vector<std::string> argv,
                                   std::shared_ptr<spdlog::logger> log) {
    std::vector<const netloop::server*> handed{&server};
    for (;;) {
        (void)co_await signals.next();
        try {
            pid_t pid = co_await netloop::start_successor(argv, handed, 10s);
            log->info("handed over to pid {}", pid);
            server.close();
            co_return;
        } catch (const netloop::error& e) {
            log->error("restart failed, serving on: {}", e.what());
        }
    }
}

void log_stats(const netloop::server& server, const std::shared_ptr<spdlog::logger>& log) {
    auto s = server.stats();
    log->info(
        "stats: accepted={} rejected={} active={} peak_active={} bytes_read={} "
        "bytes_written={} accept_errors={} handshake_failures={}",
        s.accepted, s.rejected, s.active, s.peak_active, s.bytes_read, s.bytes_written,
        s.accept_errors, s.handshake_failures);
}

netloop::task<> stats_on_sigusr1(netloop::signal_stream signals, netloop::server& server,
                                 std::shared_ptr<spdlog::logger> log) {
    for (;;) {
        (void)co_await signals.next();
        log_stats(server, log);
    }
}

std::string self_path(const char* argv0) {
    std::array<char, PATH_MAX> buf{};
    auto n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
    return n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : std::string(argv0);
}

}  // namespace

int main(int argc, char** argv) {
    config cfg;
    try {
        cfg = parse(argc, argv);
    } catch (const bad_usage& e) {
        std::fprintf(stderr, "daemon: %s\n%s", e.message.c_str(), usage);
        return 2;
    } catch (const netloop::error& e) {
        std::fprintf(stderr, "daemon: %s\n%s", e.what(), usage);
        return 2;
    }

    auto log = spdlog::stderr_logger_mt("daemon");
    log->set_level(cfg.log_level);
    netloop::set_logger(log);

    try {
        // With .rethrow the error comes to the catch below, which logs it.
        return netloop::run(
            [&]() -> netloop::task<> {
                auto server = open_server(cfg, log);
                // Watched before the announcement: a SIGUSR1/2 sent as soon as the port is known
                // must not find the signal's default action (termination) still in place.
                netloop::signal_stream usr1({SIGUSR1});
                netloop::signal_stream usr2({SIGUSR2});
                netloop::announce(server);
                log->info("listening on {}", server.local_address().to_string());
                netloop::notify_ready();
                netloop::spawn(netloop::watchdog_keepalive());
                std::vector<std::string> args{self_path(argv[0])};
                for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
                netloop::spawn(restart_on_sigusr2(std::move(usr2), server, args, log));
                netloop::spawn(stats_on_sigusr1(std::move(usr1), server, log));
                cfg.serve.on_drain = [] { netloop::notify_stopping(); };
                co_await server.serve(echo, cfg.serve);
                log_stats(server, log);
                log->info("stopped");
            },
            netloop::run_options{.rethrow = true});
    } catch (const std::exception& e) {
        log->error("{}", e.what());
        return 1;
    }
}
