// SPDX-License-Identifier: MIT
// The echo server made production-ready with serve(): limits, idle timeout, drain, logging.
//
//   daemon [--help] [host:port] [--unix PATH] [--tls-cert FILE --tls-key FILE]
//          [--tls-sni NAME=CERT,KEY]... [--tls-client-ca FILE] [--tls-resumption on|off]
//          [--max-connections N] [--on-limit pause|reject] [--max-connections-per-ip N]
//          [--idle-timeout SECONDS] [--drain-timeout SECONDS] [--linger SECONDS] [--threads N]
//          [--balance hand-off|reuse-port] [--metrics HOST:PORT]
//          [--proxy-protocol v1|v2|either] [--proxy-from CIDR[,CIDR...]]
//          [--log-level trace|debug|info|warn|error|off]
//
// --unix listens on a Unix domain socket (a path, or @name for an abstract one) instead of
// TCP. --tls-cert and --tls-key (PEM: certificate chain, private key) make every connection
// TLS; a client that does not complete its handshake within 10 s is dropped and counted.
// --tls-sni NAME=CERT,KEY (repeatable) serves clients asking for NAME (exact, or *.domain) with
// that certificate instead; others get --tls-cert's. --tls-client-ca asks every client for a
// certificate that verifies against the CAs in FILE (mutual TLS). SIGHUP re-reads all of these
// files: handshakes from then on use the new certificates, connections already open keep
// theirs, and returning clients still resume their sessions (session resumption is on unless
// --tls-resumption off). A file that does not parse, or a
// key that does not match, logs one error line and the old certificates stay in service.
// Reloads are counted in the metrics (netloop_tls_reloads_total{result="ok"|"failed"}).
// --max-connections-per-ip closes (and counts as rejected) a client's connection over N.
//
// --proxy-protocol runs the daemon behind a load balancer (HAProxy's send-proxy, nginx's
// proxy_protocol): every connection must start with a PROXY header of that version, sent from
// a source in --proxy-from (default: loopback only, 127.0.0.0/8 and ::1); the client's address
// it carries is the one logged and counted by --max-connections-per-ip. A connection from any
// other source, or without a valid header within 5 s, is closed and counted
// (netloop_proxy_header_failures_total).
//
// --metrics HOST:PORT serves the server's counters to Prometheus: GET /metrics over HTTP/1.1
// answers in the text exposition format (render_metrics), one request per connection; other
// paths get 404, other methods 405, anything unreadable 400. It serves 16 scrapes at once, at
// most 4 from one client address (more are closed at once), so one client cannot hold every
// slot. Once listening, the daemon prints a second line, "metrics on <address>". The port is
// bound with SO_REUSEPORT so that a successor started by SIGUSR2 can bind it too.
//
// Announces "listening on <address>", logs to stderr, drains on SIGINT/SIGTERM and exits 0; a
// second signal cancels the remaining connections at once.
//
// Under systemd: started with LISTEN_FDS (socket activation) it adopts the passed socket and
// never binds; with NOTIFY_SOCKET it reports READY=1 once listening, STOPPING=1 when the drain
// begins, and WATCHDOG=1 keep-alives when WATCHDOG_USEC asks for them. SIGUSR2 restarts without
// dropping a connection: a new copy of the program inherits the listening socket through the
// same LISTEN_FDS protocol, and once it is ready this one stops accepting and drains. SIGUSR1
// logs the server's stats at info level. SIGHUP reloads the TLS files (above).
#include <atomic>
#include <charconv>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;

namespace {

constexpr const char* usage =
    "usage: daemon [--help] [host:port] [--unix PATH] [--tls-cert FILE --tls-key FILE]\n"
    "              [--tls-sni NAME=CERT,KEY]... [--tls-client-ca FILE]\n"
    "              [--tls-resumption on|off]\n"
    "              [--max-connections N] [--on-limit pause|reject]\n"
    "              [--max-connections-per-ip N]\n"
    "              [--idle-timeout SECONDS] [--drain-timeout SECONDS] [--linger SECONDS]\n"
    "              [--threads N] [--balance hand-off|reuse-port]\n"
    "              [--metrics HOST:PORT]\n"
    "              [--proxy-protocol v1|v2|either] [--proxy-from CIDR[,CIDR...]]\n"
    "              [--log-level trace|debug|info|warn|error|off]\n"
    "\n"
    "  --tls-sni NAME=CERT,KEY     clients asking for NAME (exact or *.domain) get this\n"
    "                              certificate and key instead of --tls-cert's (repeatable)\n"
    "  --tls-client-ca FILE        mutual TLS: clients need a certificate from these CAs\n"
    "                              (SIGHUP re-reads every --tls-* file)\n"
    "  --tls-resumption on|off     TLS session resumption (tickets), on by default\n"
    "  --max-connections-per-ip N  at most N connections at once from one IP address;\n"
    "                              one more is closed at once and counted as rejected\n"
    "  --metrics HOST:PORT         serve GET /metrics (Prometheus text format) on HOST:PORT;\n"
    "                              prints \"metrics on <address>\" after \"listening on\";\n"
    "                              16 scrapes at once, 4 from one client address\n"
    "  --proxy-protocol VERSION    behind a load balancer: each connection starts with a PROXY\n"
    "                              header (v1, v2 or either) carrying the client's address,\n"
    "                              used for logs and --max-connections-per-ip\n"
    "  --proxy-from CIDR,...       the balancers trusted to send it (default: loopback only);\n"
    "                              a connection from elsewhere, or with no valid header, is\n"
    "                              closed and counted\n"
    "  --linger SECONDS            how long a closing connection waits for its peer to close\n"
    "                              (default 2); a connection cut by the drain never waits\n";

struct sni_certificate {
    std::string name;
    std::string cert;
    std::string key;
};

struct config {
    std::string listen_at = "127.0.0.1:8080";
    std::string unix_path;
    std::string tls_cert;
    std::string tls_key;
    std::vector<sni_certificate> tls_sni;
    std::string tls_client_ca;
    bool tls_resumption = true;
    std::string metrics_at;
    netloop::proxy_protocol proxy = netloop::proxy_protocol::off;
    std::vector<netloop::network> proxy_from = netloop::loopback_networks();
    netloop::serve_options serve;
    spdlog::level::level_enum log_level = spdlog::level::info;
};

struct bad_usage {
    std::string message;
};

struct help_requested {};

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
        if (arg == "--help" || arg == "-h") throw help_requested{};
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
        } else if (arg == "--tls-sni") {
            auto eq = value.find('=');
            auto comma = value.find(',', eq == std::string_view::npos ? 0 : eq);
            if (eq == 0 || eq == std::string_view::npos || comma == std::string_view::npos ||
                comma == eq + 1 || comma + 1 == value.size()) {
                throw bad_usage{"--tls-sni is NAME=CERT,KEY, not '" + std::string(value) + "'"};
            }
            c.tls_sni.push_back({std::string(value.substr(0, eq)),
                                 std::string(value.substr(eq + 1, comma - eq - 1)),
                                 std::string(value.substr(comma + 1))});
        } else if (arg == "--tls-client-ca") {
            c.tls_client_ca = value;
        } else if (arg == "--tls-resumption") {
            if (value != "on" && value != "off") {
                throw bad_usage{"--tls-resumption is on or off, not '" + std::string(value) + "'"};
            }
            c.tls_resumption = value == "on";
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
        } else if (arg == "--max-connections-per-ip") {
            c.serve.max_connections_per_ip = parse_count(arg, value);
        } else if (arg == "--metrics") {
            (void)netloop::address::parse(value);  // reports bad text now, as a usage error
            c.metrics_at = value;
        } else if (arg == "--proxy-protocol") {
            if (value == "v1") {
                c.proxy = netloop::proxy_protocol::v1;
            } else if (value == "v2") {
                c.proxy = netloop::proxy_protocol::v2;
            } else if (value == "either") {
                c.proxy = netloop::proxy_protocol::either;
            } else {
                throw bad_usage{"--proxy-protocol is v1, v2 or either, not '" + std::string(value) +
                                "'"};
            }
        } else if (arg == "--proxy-from") {
            try {
                c.proxy_from = netloop::parse_networks(value);
            } catch (const netloop::error& e) {
                throw bad_usage{"--proxy-from: " + std::string(e.what())};
            }
        } else if (arg == "--idle-timeout") {
            c.serve.idle_timeout = parse_seconds(arg, value);
        } else if (arg == "--drain-timeout") {
            c.serve.drain_timeout = parse_seconds(arg, value);
        } else if (arg == "--linger") {
            c.serve.linger_timeout = parse_seconds(arg, value);
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
    if (c.tls_cert.empty() && (!c.tls_sni.empty() || !c.tls_client_ca.empty())) {
        throw bad_usage{"--tls-sni and --tls-client-ca need --tls-cert and --tls-key"};
    }
    return c;
}

// Echo until the peer closes; the idle timeout, not the per-call one, ends a silent client.
netloop::task<> echo(netloop::connection conn) {
    if (auto log = netloop::logger(); log && log->should_log(spdlog::level::debug)) {
        auto via = conn.proxy_address();
        log->debug("client {}{}", conn.remote_address().to_string(),
                   via ? " via " + via->to_string() : std::string());
    }
    // An echo answers each read with one write: without TCP_NODELAY the tail of a large
    // message waits for the peer's delayed ACK (up to 40 ms on Linux).
    conn.set_no_delay(true);
    std::array<std::byte, 16384> buf;
    // read_some: the peer's EOF is a 0, not an exception.
    while (auto n = co_await conn.read_some(buf, 1h)) {
        co_await conn.write(std::span(buf).first(n), 30s);
    }
}

// The TLS context the --tls-* files describe, read now. Throws netloop::error naming the file
// that does not parse or the key that does not match.
netloop::tls_context read_tls(const config& cfg) {
    auto tls = netloop::tls_context::server(cfg.tls_cert, cfg.tls_key);
    for (const auto& sni : cfg.tls_sni) tls.add_sni(sni.name, sni.cert, sni.key);
    if (!cfg.tls_client_ca.empty()) {
        tls.trust(cfg.tls_client_ca);
        tls.set_verify_peer(true);
    }
    tls.set_session_resumption(cfg.tls_resumption);
    return tls;
}

// The server: the socket systemd passed, or one we listen on.
netloop::server open_server(const config& cfg, const netloop::tls_context& tls,
                            const std::shared_ptr<spdlog::logger>& log) {
    netloop::listen_options options;
    options.proxy_protocol = cfg.proxy;
    options.proxy_from = cfg.proxy_from;
    options.tls = tls;
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

// Just enough HTTP/1.1 for a Prometheus scraper: one request per connection, answered and closed.
std::string http_response(std::string_view status, std::string_view extra_headers,
                          std::string_view content_type, std::string_view body, bool head_only) {
    std::string out = "HTTP/1.1 ";
    out += status;
    out += "\r\nContent-Type: ";
    out += content_type;
    out += "\r\nContent-Length: " + std::to_string(body.size());
    out += "\r\nConnection: close\r\n";
    out += extra_headers;
    out += "\r\n";
    if (!head_only) out += body;
    return out;
}

// The request line of `head`, checked: a method of capital letters, a target, HTTP/1.x.
struct request_line {
    std::string_view method;
    std::string_view path;  // without the query
};

std::optional<request_line> parse_request_line(std::string_view head) {
    auto line = head.substr(0, head.find("\r\n"));
    auto sp1 = line.find(' ');
    if (sp1 == std::string_view::npos || sp1 == 0) return std::nullopt;
    auto sp2 = line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return std::nullopt;
    request_line r{line.substr(0, sp1), line.substr(sp1 + 1, sp2 - sp1 - 1)};
    auto version = line.substr(sp2 + 1);
    if (version != "HTTP/1.1" && version != "HTTP/1.0") return std::nullopt;
    for (char ch : r.method) {
        if (ch < 'A' || ch > 'Z') return std::nullopt;
    }
    if (r.path.empty() || r.path.front() != '/') return std::nullopt;
    r.path = r.path.substr(0, r.path.find('?'));
    return r;
}

// SIGHUP's TLS reloads, for the metrics.
struct reload_counts {
    std::atomic<std::uint64_t> ok{0};
    std::atomic<std::uint64_t> failed{0};
};

std::string render_reloads(const reload_counts& r) {
    return "# HELP netloop_tls_reloads_total TLS certificate reloads (SIGHUP), by result.\n"
           "# TYPE netloop_tls_reloads_total counter\n"
           "netloop_tls_reloads_total{result=\"ok\"} " +
           std::to_string(r.ok.load()) +
           "\n"
           "netloop_tls_reloads_total{result=\"failed\"} " +
           std::to_string(r.failed.load()) + "\n";
}

// On SIGHUP: re-reads the TLS files into a new context and hands it to the server; on a bad file
// the old context stays. The new context takes over the old one's session ticket keys.
netloop::task<> reload_on_sighup(netloop::signal_stream signals, netloop::server& server,
                                 config cfg, netloop::tls_context current,
                                 std::shared_ptr<reload_counts> counts,
                                 std::shared_ptr<spdlog::logger> log) {
    for (;;) {
        (void)co_await signals.next();
        if (!current) {
            log->info("SIGHUP: no TLS files to reload");
            continue;
        }
        try {
            auto fresh = read_tls(cfg);
            fresh.share_session_tickets(current);
            server.set_tls(fresh);
            current = std::move(fresh);
            counts->ok.fetch_add(1);
            log->info("TLS reloaded: {}", cfg.tls_cert);
        } catch (const netloop::error& e) {
            counts->failed.fetch_add(1);
            log->error("TLS reload failed, the old certificate stays: {}", e.what());
        }
    }
}

struct metrics_source {
    std::shared_ptr<netloop::server> server;
    std::shared_ptr<std::atomic<bool>> draining;
    std::shared_ptr<reload_counts> reloads;
};

netloop::task<> answer_scrape(netloop::connection conn, metrics_source source) {
    constexpr std::string_view plain = "text/plain; charset=utf-8";
    std::string reply;
    try {
        auto head = co_await conn.read_until("\r\n\r\n", 8192, 10s);
        auto request = parse_request_line(head);
        if (!request) {
            reply = http_response("400 Bad Request", "", plain, "bad request\n", false);
        } else if (request->method != "GET" && request->method != "HEAD") {
            reply = http_response("405 Method Not Allowed", "Allow: GET, HEAD\r\n", plain,
                                  "only GET\n", request->method == "HEAD");
        } else if (request->path != "/metrics") {
            reply = http_response("404 Not Found", "", plain, "only /metrics\n",
                                  request->method == "HEAD");
        } else {
            auto body = netloop::render_metrics(source.server->stats(),
                                                {.draining = source.draining->load()});
            body += render_reloads(*source.reloads);
            reply = http_response("200 OK", "", netloop::metrics_content_type, body,
                                  request->method == "HEAD");
        }
    } catch (const netloop::error& e) {
        if (e.kind() != netloop::errc::message_too_large) co_return;  // gone, or silent
        reply = http_response("400 Bad Request", "", plain, "request head too large\n", false);
    }
    co_await conn.write(reply, 10s);
}

// The metrics listener's accept loop; the task owns the listener, so it outlives main()'s frame
// until its last scrape ends. A client (one address) gets 4 of the 16 slots at most: idle
// connections of one cannot turn away another's scrape.
netloop::task<> serve_metrics(std::shared_ptr<netloop::server> metrics, metrics_source source) {
    auto scrape = [source](netloop::connection c) { return answer_scrape(std::move(c), source); };
    co_await metrics->serve(scrape, {.max_connections = 16,
                                     .on_limit = netloop::limit_policy::reject,
                                     .max_connections_per_ip = 4,
                                     .idle_timeout = 10s,
                                     .connection_deadline = 30s,
                                     .drain_timeout = 2s});
}

void log_stats(const netloop::server& server, const std::shared_ptr<spdlog::logger>& log) {
    auto s = server.stats();
    log->info(
        "stats: accepted={} rejected={} active={} peak_active={} bytes_read={} "
        "bytes_written={} accept_errors={} handshake_failures={} proxy_failures={}",
        s.accepted, s.rejected, s.active, s.peak_active, s.bytes_read, s.bytes_written,
        s.accept_errors, s.handshake_failures, s.proxy_failures);
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
    } catch (const help_requested&) {
        std::fputs(usage, stdout);
        return 0;
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
                netloop::tls_context tls;
                if (!cfg.tls_cert.empty()) tls = read_tls(cfg);
                // Shared with the metrics handlers, which may outlive this frame by a moment.
                auto server = std::make_shared<netloop::server>(open_server(cfg, tls, log));
                auto reloads = std::make_shared<reload_counts>();
                auto draining = std::make_shared<std::atomic<bool>>(false);
                std::shared_ptr<netloop::server> metrics;
                if (!cfg.metrics_at.empty()) {
                    auto at = netloop::address::parse(cfg.metrics_at);
                    metrics = std::make_shared<netloop::server>(
                        netloop::server::listen(at, {.reuse_port = !at.is_unix()}));
                }
                // Watched before the announcement: a SIGUSR1/2 sent as soon as the port is known
                // must not find the signal's default action (termination) still in place.
                netloop::signal_stream usr1({SIGUSR1});
                netloop::signal_stream usr2({SIGUSR2});
                netloop::signal_stream hup({SIGHUP});
                netloop::announce(*server);
                log->info("listening on {}", server->local_address().to_string());
                if (metrics) {
                    auto at = metrics->local_address().to_string();
                    std::printf("metrics on %s\n", at.c_str());
                    std::fflush(stdout);
                    log->info("metrics on {}", at);
                    netloop::spawn(serve_metrics(metrics, {server, draining, reloads}));
                }
                netloop::notify_ready();
                netloop::spawn(netloop::watchdog_keepalive());
                std::vector<std::string> args{self_path(argv[0])};
                for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
                netloop::spawn(restart_on_sigusr2(std::move(usr2), *server, args, log));
                netloop::spawn(stats_on_sigusr1(std::move(usr1), *server, log));
                netloop::spawn(reload_on_sighup(std::move(hup), *server, cfg, tls, reloads, log));
                cfg.serve.on_drain = [draining] {
                    draining->store(true);
                    netloop::notify_stopping();
                };
                co_await server->serve(echo, cfg.serve);
                if (metrics) metrics->close();
                log_stats(*server, log);
                log->info("stopped");
            },
            netloop::run_options{.rethrow = true});
    } catch (const std::exception& e) {
        log->error("{}", e.what());
        return 1;
    }
}
