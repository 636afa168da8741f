// SPDX-License-Identifier: MIT
// samples/daemon's TLS as operators run it, with Debian's openssl s_client as the client:
// SIGHUP reloads, SNI, session resumption. What the daemon has no flag for (ALPN, the ticket
// key rotation) is served by a netloop server in this process, still with s_client as the client.
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/process.hpp"
#include "support/serve_helpers.hpp"
#include "support/temp_file.hpp"
#include "support/test_certs.hpp"

using namespace std::chrono_literals;
using netloop::test::child_process;
using netloop::test::pem_pair;
using netloop::test::temp_file;

namespace {

namespace certs = netloop::test::certs_detail;

// A CA and leaves it signs, each with its own serial (hex as `openssl x509 -serial` prints it).
struct daemon_pki {
    pem_pair ca;
    pem_pair first;     // serial 1001
    pem_pair second;    // serial 2002
    pem_pair named;     // serial A1A1 (for an SNI name)
    pem_pair wildcard;  // serial B2B2 (for a wildcard SNI name)
};

const daemon_pki& daemon_certs() {
    static const daemon_pki instance = [] {
        constexpr long day = 24 * 3600;
        auto ca_key = certs::new_key();
        auto ca = certs::make_cert(ca_key.get(), "netloop reload CA", 1, -3600, day, true, nullptr,
                                   nullptr);
        auto leaf = [&](const char* cn, long serial) {
            auto key = certs::new_key();
            auto cert =
                certs::make_cert(key.get(), cn, serial, -3600, day, false, ca.get(), ca_key.get());
            return pem_pair{certs::pem_of(cert.get()), certs::pem_of(key.get())};
        };
        daemon_pki p;
        p.ca = {certs::pem_of(ca.get()), certs::pem_of(ca_key.get())};
        p.first = leaf("localhost", 0x1001);
        p.second = leaf("localhost", 0x2002);
        p.named = leaf("a.example.test", 0xA1A1);
        p.wildcard = leaf("wild.example.test", 0xB2B2);
        return p;
    }();
    return instance;
}

// Replaces `file`'s contents at once, as certbot's renewal does (a new file renamed over it).
void replace(const temp_file& file, const std::string& text) {
    temp_file fresh;
    fresh.write(text);
    std::filesystem::rename(fresh.path(), file.path());
}

// Runs `script` with /bin/sh and returns its stdout (bounded: the script's own `timeout`s and
// the wait here).
std::string shell(const std::string& script) {
    temp_file out;
    child_process sh({"/bin/sh", "-c", "( " + script + " ) > '" + out.path() + "' 2>&1"});
    if (!sh.exited_with(0, 30s)) return "(the shell failed or timed out)";
    return out.contents();
}

std::string s_client(std::uint16_t port, const std::string& flags) {
    return "timeout 20 openssl s_client -connect 127.0.0.1:" + std::to_string(port) + " " + flags;
}

// The serial of the certificate the daemon presents to a client with `flags`, e.g.
// "serial=1001".
std::string serial_seen(std::uint16_t port, const std::string& flags = {}) {
    auto out =
        shell(s_client(port, flags) + " </dev/null 2>/dev/null | openssl x509 -noout -serial");
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
}

// Waits (bounded) until `pred` holds; true if it did.
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit = 20s) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= until) return false;
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

// The daemon with TLS from `cert`/`key` and `flags`, its stderr in `err`.
std::vector<std::string> daemon_args(const temp_file& cert, const temp_file& key,
                                     const std::vector<std::string>& flags = {}) {
    std::vector<std::string> argv{netloop::test::sample_path("daemon"),
                                  "127.0.0.1:0",
                                  "--tls-cert",
                                  cert.path(),
                                  "--tls-key",
                                  key.path()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
}

// The line of the daemon's metrics that starts with `name` (empty if none), fetched over HTTP.
std::string metric_line(const std::string& metrics_at, const std::string& name) {
    auto body = netloop::test::run_bounded([&]() -> netloop::task<std::string> {
        auto c = co_await netloop::connect(netloop::address::parse(metrics_at), 5s);
        co_await c.write(std::string_view("GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"), 5s);
        std::string all;
        std::array<std::byte, 4096> buf;
        try {
            for (;;) {
                auto n = co_await c.read(buf, 5s);
                all.append(reinterpret_cast<const char*>(buf.data()), n);
            }
        } catch (const netloop::error&) {
        }
        co_return all;
    });
    for (auto at = body.find(name); at != std::string::npos; at = body.find(name, at + 1)) {
        if (at == 0 || body[at - 1] == '\n') return body.substr(at, body.find('\n', at) - at);
    }
    return {};
}

// One s_client connection with `flags` that sends a line and keeps its stdin open until the
// line has come back or the client reports an error (bounded); the client's output. The
// session tickets, sent right after the handshake, have arrived when -sess_out writes the
// session.
std::string echo_line(std::uint16_t port, const std::string& flags) {
    temp_file out;
    shell("{ printf 'echo-me\\n'; j=0; while ! grep -q 'echo-me\\|:error:' '" + out.path() +
          "' && [ $j -lt 500 ]; do sleep 0.02; j=$((j+1)); done; } | " +
          s_client(port, "-no_ign_eof " + flags) + " > '" + out.path() + "' 2>&1");
    return out.contents();
}

// s_client does not print what it sends, so the line in its output came back from the server (not
// necessarily at the start of a line: the client's diagnostics interleave with it).
bool echoed(const std::string& out) { return out.find("echo-me") != std::string::npos; }

bool reused(const std::string& out) { return out.find("Reused, TLSv1.") != std::string::npos; }

// The name of the key a saved session's ticket is encrypted with: the ticket's first 16 bytes,
// the first line of `openssl sess_id -text`'s dump of it (empty if there is no ticket).
std::string ticket_key_name(const temp_file& session) {
    auto text = shell("openssl sess_id -in '" + session.path() + "' -noout -text");
    auto at = text.find("TLS session ticket:");
    if (at == std::string::npos) return {};
    auto line = text.find('\n', at);
    if (line == std::string::npos) return {};
    ++line;
    return text.substr(line, text.find('\n', line) - line);
}

// A netloop server in this process, on a thread of its own, with `tls` and `options`, echoing
// what it reads; it records the threads (loops) its connections were served on.
class in_process_server {
public:
    in_process_server(netloop::tls_context tls, netloop::serve_options options)
        : thread_([this, tls, options] { run(tls, options); }) {}

    in_process_server(const in_process_server&) = delete;
    in_process_server& operator=(const in_process_server&) = delete;

    ~in_process_server() {
        stop_.store(true);
        thread_.join();
    }

    // The port, once listening (0 if it did not within 10 s).
    std::uint16_t port() const {
        (void)wait_until([&] { return port_.load() != 0 || failed_.load(); }, 10s);
        return port_.load();
    }

    std::size_t loops_used() {
        std::lock_guard lock(mutex_);
        return loops_.size();
    }

private:
    void run(netloop::tls_context tls, netloop::serve_options options) {
        try {
            netloop::run(
                [&]() -> netloop::task<> {
                    auto s = netloop::server::listen(netloop::address::parse("127.0.0.1:0"),
                                                     netloop::listen_options{.tls = tls});
                    netloop::test::serve_outcome serving;
                    auto handler = [this](netloop::connection c) -> netloop::task<> {
                        {
                            std::lock_guard lock(mutex_);
                            loops_.insert(std::this_thread::get_id());
                        }
                        std::array<std::byte, 4096> buf;
                        try {
                            for (;;) {
                                auto n = co_await c.read(buf, 30s);
                                co_await c.write(std::span(buf).first(n), 30s);
                            }
                        } catch (const netloop::error&) {
                        }
                    };
                    netloop::spawn(netloop::test::serve_into(s, handler, options, serving));
                    port_.store(s.local_port());
                    (void)co_await netloop::test::eventually([&] { return stop_.load(); }, 120s);
                    s.close();
                    (void)co_await netloop::test::eventually([&] { return serving.done; });
                },
                {.cancel_on_signal = false, .rethrow = true});
        } catch (...) {
            failed_.store(true);
        }
    }

    std::atomic<std::uint16_t> port_{0};
    std::atomic<bool> stop_{false};
    std::atomic<bool> failed_{false};
    std::mutex mutex_;
    std::set<std::thread::id> loops_;
    std::thread thread_;
};

}  // namespace

TEST_CASE(
    "daemon SIGHUP: a new client sees the new certificate's serial, and a client connected "
    "before keeps streaming byte-exact through the reload",
    "[samples][daemon][tls]") {
    const auto& pki = daemon_certs();
    temp_file cert, key, ca, err, stream_out, stream_err, go_on;
    cert.write(pki.first.cert);
    key.write(pki.first.key);
    ca.write(pki.ca.cert);
    std::filesystem::remove(go_on.path());  // created when the streaming client may go on
    child_process daemon(daemon_args(cert, key, {"--metrics", "127.0.0.1:0"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    auto metrics_line = daemon.read_line();
    REQUIRE(metrics_line);
    auto metrics_at = metrics_line->substr(std::string("metrics on ").size());
    REQUIRE(serial_seen(port, "-CAfile '" + ca.path() + "'") == "serial=1001");

    // 500 lines before the reload, 500 after; the client's stdin stays open until every line
    // has come back (each wait bounded at 30 s).
    std::string expected;
    for (int i = 0; i < 500; ++i) {
        char line[128];
        std::snprintf(line, sizeof line, "before %05d %s\n", i,
                      "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz");
        expected += line;
    }
    for (int i = 0; i < 500; ++i) {
        char line[128];
        std::snprintf(line, sizeof line, "after %05d %s\n", i,
                      "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQ");
        expected += line;
    }
    std::string script =
        "{ i=0; while [ $i -lt 500 ]; do printf 'before %05d %s\\n' $i "
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz; "
        "i=$((i+1)); done; "
        "j=0; while [ ! -e '" +
        go_on.path() +
        "' ] && [ $j -lt 1500 ]; do sleep 0.02; "
        "j=$((j+1)); done; "
        "i=0; while [ $i -lt 500 ]; do printf 'after %05d %s\\n' $i "
        "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQ; "
        "i=$((i+1)); done; "
        "j=0; while [ $(wc -l < '" +
        stream_out.path() +
        "') -lt 1000 ] && [ $j -lt 1500 ]; "
        "do sleep 0.02; j=$((j+1)); done; } | " +
        s_client(port, "-CAfile '" + ca.path() + "' -verify_return_error -brief -no_ign_eof") +
        " > '" + stream_out.path() + "' 2> '" + stream_err.path() + "'";
    child_process streaming({"/bin/sh", "-c", script});
    // The first half has come back: the client is connected and streaming.
    REQUIRE(wait_until([&] { return count_of(stream_out.contents(), "\n") >= 500; }));

    replace(cert, pki.second.cert);
    replace(key, pki.second.key);
    daemon.signal(SIGHUP);
    REQUIRE(wait_until([&] { return err.contents().find("TLS reloaded") != std::string::npos; }));
    CHECK(serial_seen(port, "-CAfile '" + ca.path() + "'") == "serial=2002");

    // The client connected before goes on streaming on its old session.
    go_on.write("go");
    CAPTURE(stream_err.contents());
    CHECK(streaming.exited_with(0, 40s));
    CHECK(stream_out.contents() == expected);
    CHECK(metric_line(metrics_at, "netloop_tls_reloads_total{result=\"ok\"}") ==
          "netloop_tls_reloads_total{result=\"ok\"} 1");

    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
    CHECK(count_of(err.contents(), "[error]") == 0);
}

TEST_CASE(
    "daemon SIGHUP: a certificate that does not parse, or a key that does not match, logs one "
    "error line each and the old certificate keeps serving",
    "[samples][daemon][tls]") {
    const auto& pki = daemon_certs();
    temp_file cert, key, ca, err;
    cert.write(pki.first.cert);
    key.write(pki.first.key);
    ca.write(pki.ca.cert);
    child_process daemon(daemon_args(cert, key, {"--metrics", "127.0.0.1:0"}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    auto metrics_line = daemon.read_line();
    REQUIRE(metrics_line);
    auto metrics_at = metrics_line->substr(std::string("metrics on ").size());
    auto verified = "-CAfile '" + ca.path() + "' -verify_return_error";

    replace(cert, "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    daemon.signal(SIGHUP);
    REQUIRE(wait_until([&] { return count_of(err.contents(), "TLS reload failed") == 1; }));
    CHECK(serial_seen(port, verified) == "serial=1001");

    replace(cert, pki.second.cert);  // the key is still the first one's: no match
    daemon.signal(SIGHUP);
    REQUIRE(wait_until([&] { return count_of(err.contents(), "TLS reload failed") == 2; }));
    CHECK(serial_seen(port, verified) == "serial=1001");
    CHECK(metric_line(metrics_at, "netloop_tls_reloads_total{result=\"failed\"}") ==
          "netloop_tls_reloads_total{result=\"failed\"} 2");
    CHECK(metric_line(metrics_at, "netloop_tls_reloads_total{result=\"ok\"}") ==
          "netloop_tls_reloads_total{result=\"ok\"} 0");

    daemon.signal(SIGTERM);
    CHECK(daemon.exited_with(0, 10s));
    auto log = err.contents();
    CAPTURE(log);
    CHECK(count_of(log, "[error]") == 2);
    CHECK(count_of(log, "TLS private key " + key.path() + " (key values mismatch") == 1);
    CHECK(count_of(log, "TLS certificate " + cert.path()) == 1);
}

TEST_CASE(
    "daemon --tls-sni: two names get their own certificates; an unknown name and no name get "
    "the default",
    "[samples][daemon][tls]") {
    const auto& pki = daemon_certs();
    temp_file cert, key, named_cert, named_key, wild_cert, wild_key, err;
    cert.write(pki.first.cert);
    key.write(pki.first.key);
    named_cert.write(pki.named.cert);
    named_key.write(pki.named.key);
    wild_cert.write(pki.wildcard.cert);
    wild_key.write(pki.wildcard.key);
    child_process daemon(
        daemon_args(
            cert, key,
            {"--tls-sni", "a.example.test=" + named_cert.path() + "," + named_key.path(),
             "--tls-sni", "*.wild.example.test=" + wild_cert.path() + "," + wild_key.path()}),
        {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    CHECK(serial_seen(port, "-servername a.example.test") == "serial=A1A1");
    CHECK(serial_seen(port, "-servername A.Example.TEST") == "serial=A1A1");
    CHECK(serial_seen(port, "-servername x.wild.example.test") == "serial=B2B2");
    CHECK(serial_seen(port, "-servername wild.example.test") == "serial=1001");
    CHECK(serial_seen(port, "-servername x.y.wild.example.test") == "serial=1001");
    CHECK(serial_seen(port, "-servername unknown.test") == "serial=1001");
    CHECK(serial_seen(port, "-noservername") == "serial=1001");
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "daemon --tls-sni: an exact name wins over a wildcard that also matches it, and a name given "
    "again replaces its certificate",
    "[samples][daemon][tls]") {
    const auto& pki = daemon_certs();
    temp_file cert, key, named_cert, named_key, wild_cert, wild_key, err;
    cert.write(pki.first.cert);
    key.write(pki.first.key);
    named_cert.write(pki.named.cert);
    named_key.write(pki.named.key);
    wild_cert.write(pki.wildcard.cert);
    wild_key.write(pki.wildcard.key);
    auto pair = [](const temp_file& c, const temp_file& k) { return c.path() + "," + k.path(); };
    // The wildcard comes first, so that the exact name wins by kind, not by order; the last
    // name is given twice (in another case), the second time with another certificate.
    child_process daemon(daemon_args(cert, key,
                                     {"--tls-sni", "*.example.test=" + pair(wild_cert, wild_key),
                                      "--tls-sni", "a.example.test=" + pair(named_cert, named_key),
                                      "--tls-sni", "again.test=" + pair(wild_cert, wild_key),
                                      "--tls-sni", "AGAIN.test=" + pair(named_cert, named_key)}),
                         {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    CHECK(serial_seen(port, "-servername a.example.test") == "serial=A1A1");
    CHECK(serial_seen(port, "-servername b.example.test") == "serial=B2B2");
    CHECK(serial_seen(port, "-servername again.test") == "serial=A1A1");
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "daemon: a returning client's session is resumed (TLS 1.3 and 1.2), also across a SIGHUP "
    "reload; with --tls-resumption off the server hands out no session to resume",
    "[samples][daemon][tls]") {
    auto version = GENERATE(as<std::string>{}, "-tls1_3", "-tls1_2");
    auto resumption = GENERATE(as<std::string>{}, "on", "off");
    CAPTURE(version, resumption);
    const auto& pki = daemon_certs();
    temp_file cert, key, ca, err, session;
    cert.write(pki.first.cert);
    key.write(pki.first.key);
    ca.write(pki.ca.cert);
    child_process daemon(daemon_args(cert, key, {"--tls-resumption", resumption}), {}, err.path());
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    // The client's stdin stays open until its line has come back (bounded): the session
    // tickets, sent right after the handshake, have arrived when -sess_out writes the session.
    auto connect = [&](const std::string& flags) {
        temp_file out;
        shell("{ printf 'echo-me\\n'; j=0; while ! grep -q '^echo-me' '" + out.path() +
              "' && [ $j -lt 500 ]; do sleep 0.02; j=$((j+1)); done; } | " +
              s_client(port, "-CAfile '" + ca.path() + "' -verify_return_error -no_ign_eof " +
                                 version + " " + flags) +
              " > '" + out.path() + "' 2>&1");
        return out.contents();
    };
    auto first = connect("-sess_out '" + session.path() + "'");
    CAPTURE(first);
    CHECK(first.find("New, TLSv1.") != std::string::npos);
    if (resumption == "off") {
        // No ticket, no session ID: the client has no session to offer again.
        CHECK(first.find("TLS session ticket:") == std::string::npos);
        CHECK(session.contents().empty());
        daemon.signal(SIGTERM);
        CHECK(daemon.exited_with(0, 10s));
        return;
    }
    auto second = connect("-sess_in '" + session.path() + "'");
    CAPTURE(second);
    CHECK(second.find("Reused, TLSv1.") != std::string::npos);

    replace(cert, pki.second.cert);
    replace(key, pki.second.key);
    daemon.signal(SIGHUP);
    REQUIRE(wait_until([&] { return err.contents().find("TLS reloaded") != std::string::npos; }));
    auto after_reload = connect("-sess_in '" + session.path() + "'");
    CAPTURE(after_reload);
    CHECK(after_reload.find("Reused, TLSv1.") != std::string::npos);
    daemon.signal(SIGTERM);
    CAPTURE(err.contents());
    CHECK(daemon.exited_with(0, 10s));
}

TEST_CASE(
    "daemon rejects a malformed --tls-sni or --tls-resumption, and --tls-sni without "
    "--tls-cert, with exit status 2 and a message naming the flag",
    "[samples][daemon][tls]") {
    const std::vector<std::vector<std::string>> cases{
        {"--tls-sni", "a.example.test"},
        {"--tls-sni", "=cert.pem,key.pem"},
        {"--tls-sni", "a.example.test=cert.pem"},
        {"--tls-sni", "a.example.test=cert.pem,"},
        {"--tls-resumption", "maybe"},
        {"--tls-sni", "a.example.test=cert.pem,key.pem"},  // no --tls-cert
    };
    for (const auto& flags : cases) {
        temp_file err;
        std::vector<std::string> argv{netloop::test::sample_path("daemon"), "127.0.0.1:0"};
        argv.insert(argv.end(), flags.begin(), flags.end());
        child_process daemon(argv, {}, err.path());
        CAPTURE(flags[0], flags[1], err.contents());
        CHECK(daemon.exited_with(2, 10s));
        CHECK(err.contents().find(flags[0]) != std::string::npos);
    }
}

TEST_CASE(
    "add_sni: a name shares the context's ALPN, session tickets and mutual TLS (a client without "
    "a certificate is refused under the name too)",
    "[samples][tls]") {
    auto version = GENERATE(as<std::string>{}, "-tls1_3", "-tls1_2");
    CAPTURE(version);
    const auto& pki = daemon_certs();
    auto tls = netloop::tls_context::server_from_pem(pki.first.cert, pki.first.key);
    tls.trust_pem(pki.ca.cert);
    tls.set_verify_peer(true);
    tls.set_alpn({"h2", "http/1.1"});
    tls.add_sni_pem("a.example.test", pki.named.cert, pki.named.key);
    in_process_server server(tls, {});
    auto port = server.port();
    REQUIRE(port != 0);
    temp_file ca, client_cert, client_key, session;
    ca.write(pki.ca.cert);
    client_cert.write(pki.second.cert);
    client_key.write(pki.second.key);
    auto flags = "-servername a.example.test -CAfile '" + ca.path() + "' -verify_return_error " +
                 version + " ";
    auto with_cert = flags + "-cert '" + client_cert.path() + "' -key '" + client_key.path() + "' ";

    auto first =
        echo_line(port, with_cert + "-alpn http/1.1,h2 -sess_out '" + session.path() + "'");
    CAPTURE(first);
    CHECK(first.find("s:CN = a.example.test") != std::string::npos);  // the name's certificate
    CHECK(first.find("ALPN protocol: h2") != std::string::npos);      // the server's choice
    CHECK(echoed(first));
    CHECK(first.find("New, TLSv1.") != std::string::npos);

    auto again = echo_line(port, with_cert + "-sess_in '" + session.path() + "'");
    CAPTURE(again);
    CHECK(reused(again));
    CHECK(echoed(again));

    auto no_cert = echo_line(port, flags);
    CAPTURE(no_cert);
    CHECK_FALSE(echoed(no_cert));
}

TEST_CASE(
    "set_session_ticket_rotation: a ticket made under the key before the current one still "
    "resumes, one older than two rotations does not, and every loop resumes every ticket",
    "[samples][tls]") {
    constexpr auto rotation = 3s;
    const auto& pki = daemon_certs();
    auto tls = netloop::tls_context::server_from_pem(pki.first.cert, pki.first.key);
    tls.set_session_ticket_rotation(rotation);
    in_process_server server(tls, {.threads = 2, .balance = netloop::balance_mode::hand_off});
    auto port = server.port();
    REQUIRE(port != 0);
    temp_file first, late, renewed, scratch;
    // The first key is made at the first handshake, after `start`.
    auto start = std::chrono::steady_clock::now();
    auto one = echo_line(port, "-sess_out '" + first.path() + "'");
    CAPTURE(one);
    REQUIRE(echoed(one));
    auto first_key = ticket_key_name(first);
    REQUIRE(!first_key.empty());

    // Shared by every loop: hand_off alternates, so these land on both loops.
    for (int i = 0; i < 4; ++i) {
        auto back = echo_line(port, "-sess_in '" + first.path() + "'");
        CAPTURE(i, back);
        CHECK(reused(back));
    }
    CHECK(server.loops_used() == 2);

    // Late in the first key's period: a ticket still under the first key...
    std::this_thread::sleep_until(start + rotation * 2 / 3);
    auto two = echo_line(port, "-sess_out '" + late.path() + "'");
    CAPTURE(two);
    REQUIRE(echoed(two));
    REQUIRE(ticket_key_name(late) == first_key);
    // ... resumes after the rotation: the key before the current one decrypts it.
    std::this_thread::sleep_until(start + rotation + rotation / 6);
    auto three = echo_line(port, "-sess_in '" + late.path() + "'");
    CAPTURE(three);
    CHECK(echoed(three));
    CHECK(reused(three));
    // The rotation did happen: a new client's ticket is under another key.
    auto fresh = echo_line(port, "-sess_out '" + renewed.path() + "'");
    CAPTURE(fresh);
    auto new_key = ticket_key_name(renewed);
    CHECK(!new_key.empty());
    CHECK(new_key != first_key);

    // Older than two rotations (and a second of the clock's granularity): a full handshake.
    std::this_thread::sleep_until(start + 2 * rotation + 2s);
    auto four = echo_line(port, "-sess_in '" + first.path() + "'");
    CAPTURE(four);
    CHECK(echoed(four));
    CHECK_FALSE(reused(four));
    CHECK(four.find("New, TLSv1.") != std::string::npos);
}
