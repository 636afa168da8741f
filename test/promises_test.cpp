// SPDX-License-Identifier: MIT
// Promises of the public headers that no concept test proved: each test here is listed in
// doc/promises.md under the promise it proves.
#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <vector>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <netloop/netloop.hpp>

// After netloop's headers, which define NETLOOP_HAS_TLS.
#if NETLOOP_HAS_TLS
#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>

#include <openssl/ssl.h>
#endif

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/temp_file.hpp"
#include "support/transport.hpp"

using namespace std::chrono_literals;
using netloop::errc;
using netloop::task;
using netloop::test::make_pair;
using netloop::test::run_bounded;

namespace {

// What a call threw that is not a netloop::error.
constexpr auto not_a_netloop_error = static_cast<errc>(-1);

// Awaits `op` and returns the errc it failed with, errc{} if it did not fail.
template <typename T>
task<errc> kind_of(task<T> op) {
    try {
        (void)co_await std::move(op);
    } catch (const netloop::error& e) {
        co_return e.kind();
    } catch (const std::exception&) {
        co_return not_a_netloop_error;
    }
    co_return errc{};
}

// Starts `op` in a task of its own that `cancel` can cancel; `result` is set when it ends.
void spawn_cancellable(task<errc> op, asio::cancellation_signal& cancel,
                       std::optional<errc>& result) {
    asio::co_spawn(
        netloop::loop::shared().context(),
        [](task<errc> inner, std::optional<errc>& out) -> task<> {
            out = co_await std::move(inner);
        }(std::move(op), result),
        asio::bind_cancellation_slot(cancel.slot(), asio::detached));
}

std::size_t open_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/self/fd")) {
        ++n;
    }
    return n;
}

// Sets an environment variable for the scope, and restores what was there.
class scoped_env {
public:
    scoped_env(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value != nullptr) {
            ::setenv(name, value, 1);
        } else {
            ::unsetenv(name);
        }
    }
    ~scoped_env() {
        if (old_) {
            ::setenv(name_, old_->c_str(), 1);
        } else {
            ::unsetenv(name_);
        }
    }
    scoped_env(const scoped_env&) = delete;
    scoped_env& operator=(const scoped_env&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

// A Unix datagram socket bound to a fresh abstract name: a NOTIFY_SOCKET that nobody reads
// until the test does.
class notify_receiver {
public:
    notify_receiver() : name_("@netloop-promises-" + std::to_string(::getpid())) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, name_.data(), name_.size());
        addr.sun_path[0] = '\0';
        auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name_.size());
        bound_ = ::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), size) == 0;
    }
    ~notify_receiver() { ::close(fd_); }
    notify_receiver(const notify_receiver&) = delete;
    notify_receiver& operator=(const notify_receiver&) = delete;

    [[nodiscard]] bool bound() const noexcept { return bound_; }
    [[nodiscard]] const std::string& name() const noexcept { return name_; }

    // Every datagram queued now, in order.
    std::vector<std::string> drain() const {
        std::vector<std::string> out;
        char buf[512];
        for (;;) {
            auto n = ::recv(fd_, buf, sizeof buf, 0);
            if (n < 0) break;
            out.emplace_back(buf, static_cast<std::size_t>(n));
        }
        return out;
    }

private:
    std::string name_;
    int fd_ = -1;
    bool bound_ = false;
};

}  // namespace

TEST_CASE("close() twice, and shutdown_write() after close(), are harmless", "[promises]") {
    auto kind = run_bounded([]() -> task<errc> {
        auto pair = co_await make_pair();
        pair.server_side.close();
        pair.server_side.close();
        pair.server_side.shutdown_write();
        // The peer sees one orderly close.
        std::array<std::byte, 8> buf;
        co_return co_await kind_of(pair.client_side.read(buf, 5s));
    });
    CHECK(kind == errc::connection_closed);
}

TEST_CASE("consume() of more than is buffered drops what is buffered and nothing that comes later",
          "[promises][framing]") {
    auto got = run_bounded([]() -> task<std::pair<std::size_t, std::string>> {
        auto pair = co_await make_pair();
        co_await pair.client_side.write(std::string_view("abc"), 5s);
        while (pair.server_side.buffered().size() < 3) (void)co_await pair.server_side.fill(5s);
        pair.server_side.consume(1000);
        auto left = pair.server_side.buffered().size();
        co_await pair.client_side.write(std::string_view("def"), 5s);
        auto bytes = co_await netloop::test::read_n(pair.server_side, 3);
        co_return std::pair<std::size_t, std::string>{
            left, std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size())};
    });
    CHECK(got.first == 0);
    CHECK(got.second == "def");
}

TEST_CASE("a connection that has read the peer's EOF closes its socket at once, without a linger",
          "[promises][connection]") {
    // The linger would hold the socket for linger_timeout (2 s) while the peer stays open: the
    // socket must be gone long before that.
    auto closed = run_bounded([]() -> task<bool> {
        auto pair = co_await make_pair();
        pair.client_side.shutdown_write();
        std::array<std::byte, 8> buf;
        auto eof = co_await kind_of(pair.server_side.read(buf, 5s));
        if (eof != errc::connection_closed) co_return false;
        auto before = open_fds();
        pair.server_side.close();
        for (int i = 0; i < 50 && open_fds() >= before; ++i) {
            co_await netloop::test::sleep_for(10ms);
        }
        co_return open_fds() < before;  // the client's end is still open all along
    });
    CHECK(closed);
}

TEST_CASE("set_keep_alive() with a probe count the kernel refuses throws errc::option_failed",
          "[promises][connection][options]") {
    auto kind = run_bounded([]() -> task<errc> {
        auto pair = co_await make_pair();
        try {
            pair.server_side.set_keep_alive(true, 60s, 10s, 100000);  // TCP_KEEPCNT: at most 127
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return errc{};
    });
    CHECK(kind == errc::option_failed);
}

TEST_CASE("loop::stop() from another thread makes run() return, with errc::cancelled",
          "[promises][loop]") {
    netloop::loop mine;
    std::atomic<bool> started{false};
    std::optional<errc> kind;
    std::thread stopper([&] {
        while (!started) std::this_thread::yield();
        mine.stop();
    });
    try {
        // Without a working stop() the coroutine ends by itself after 20 s, and run() returns 0.
        netloop::run(
            [&]() -> task<> {
                started = true;
                asio::steady_timer t(co_await asio::this_coro::executor, 20s);
                co_await t.async_wait(asio::use_awaitable);
            },
            netloop::run_options{.cancel_on_signal = false, .rethrow = true}, mine);
    } catch (const netloop::error& e) {
        kind = e.kind();
    }
    stopper.join();
    REQUIRE(kind);
    CHECK(*kind == errc::cancelled);
}

TEST_CASE("post() from another thread runs the function on the loop's thread", "[promises][loop]") {
    std::thread::id ran_on;
    std::thread::id loop_thread;
    run_bounded([&]() -> task<> {
        loop_thread = std::this_thread::get_id();
        bool done = false;
        std::thread poster([&] {
            netloop::loop::shared().post([&] {
                ran_on = std::this_thread::get_id();
                done = true;
            });
        });
        while (!done) co_await netloop::test::sleep_for(1ms);
        poster.join();
    });
    CHECK(ran_on == loop_thread);
}

TEST_CASE("cancel_spawned() cancels every pending spawned task of its loop", "[promises][loop]") {
    auto got = run_bounded([]() -> task<std::pair<int, std::size_t>> {
        int cancelled = 0;
        for (int i = 0; i < 3; ++i) {
            netloop::spawn([](int& count) -> task<> {
                try {
                    co_await netloop::test::sleep_for(20s);
                } catch (const std::system_error&) {
                    ++count;
                }
            }(cancelled));
        }
        co_await netloop::test::yield();
        netloop::loop::shared().cancel_spawned();
        for (int i = 0; i < 100 && netloop::loop::shared().spawned() > 0; ++i) {
            co_await netloop::test::yield();
        }
        co_return std::pair<int, std::size_t>{cancelled, netloop::loop::shared().spawned()};
    });
    CHECK(got.first == 3);
    CHECK(got.second == 0);
}

TEST_CASE("a signal_stream, once destroyed, leaves its signals' default disposition",
          "[promises][signal]") {
    run_bounded([]() -> task<> {
        netloop::signal_stream signals({SIGUSR2});
        co_return;
    });
    struct sigaction now {};
    REQUIRE(::sigaction(SIGUSR2, nullptr, &now) == 0);
    CHECK(now.sa_handler == SIG_DFL);
}

TEST_CASE("cancelling the task that awaits signal_stream::next() throws errc::cancelled",
          "[promises][signal]") {
    auto kind = run_bounded([]() -> task<errc> {
        netloop::signal_stream signals({SIGUSR2});
        asio::cancellation_signal cancel;
        std::optional<errc> result;
        spawn_cancellable(kind_of(signals.next()), cancel, result);
        co_await netloop::test::yield();
        cancel.emit(asio::cancellation_type::terminal);
        while (!result) co_await netloop::test::yield();
        co_return *result;
    });
    CHECK(kind == errc::cancelled);
}

TEST_CASE("notify() without NOTIFY_SOCKET returns false and does nothing", "[promises][daemon]") {
    scoped_env unset("NOTIFY_SOCKET", nullptr);
    CHECK_FALSE(netloop::notify("READY=1"));
    CHECK_FALSE(netloop::notify_status("up"));
}

TEST_CASE("notify() to a socket nobody reads never blocks: once the queue is full it returns false",
          "[promises][daemon]") {
    notify_receiver receiver;
    REQUIRE(receiver.bound());
    scoped_env set("NOTIFY_SOCKET", receiver.name().c_str());
    // A blocking send would hang here at the first full queue (a few hundred datagrams): the
    // test would end by Meson's timeout instead of a result.
    int sent = 0;
    int refused = 0;
    for (int i = 0; i < 100000 && refused == 0; ++i) {
        if (netloop::notify("STATUS=" + std::to_string(i))) {
            ++sent;
        } else {
            ++refused;
        }
    }
    CHECK(sent > 0);
    CHECK(refused == 1);
    CHECK(receiver.drain().size() == static_cast<std::size_t>(sent));
}

TEST_CASE("notify() from four threads at once delivers each message whole", "[promises][daemon]") {
    notify_receiver receiver;
    REQUIRE(receiver.bound());
    scoped_env set("NOTIFY_SOCKET", receiver.name().c_str());
    constexpr int per_thread = 25;
    std::atomic<int> sent{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([t, &sent] {
            // A full queue (the kernel holds about ten datagrams) makes notify() return false at
            // once; the reader below empties it, so each message goes out after a few tries.
            for (int i = 0; i < per_thread; ++i) {
                auto text = "STATUS=thread " + std::to_string(t) + " message " + std::to_string(i);
                for (int tries = 0; tries < 1000000; ++tries) {
                    if (netloop::notify(text)) {
                        ++sent;
                        break;
                    }
                    std::this_thread::yield();
                }
            }
        });
    }
    std::vector<std::string> got;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (got.size() < 4 * per_thread && std::chrono::steady_clock::now() < deadline) {
        for (auto& m : receiver.drain()) got.push_back(std::move(m));
        std::this_thread::yield();
    }
    for (auto& t : threads) t.join();
    for (auto& m : receiver.drain()) got.push_back(std::move(m));
    CHECK(sent == 4 * per_thread);
    REQUIRE(got.size() == 4 * per_thread);
    for (const auto& m : got) {
        CAPTURE(m);
        CHECK(m.starts_with("STATUS=thread "));
        CHECK(m.find(" message ") != std::string::npos);
    }
}

TEST_CASE("watchdog_keepalive() returns at once when no watchdog is asked of this process",
          "[promises][daemon]") {
    {
        scoped_env usec("WATCHDOG_USEC", nullptr);
        run_bounded([]() -> task<> { co_await netloop::watchdog_keepalive(); }, 5s);
    }
    {
        scoped_env usec("WATCHDOG_USEC", "1000000");
        scoped_env pid("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str());
        run_bounded([]() -> task<> { co_await netloop::watchdog_keepalive(); }, 5s);
    }
    SUCCEED("both returned before the watchdog fired");
}

TEST_CASE("a cancelled watchdog_keepalive() ends with errc::cancelled", "[promises][daemon]") {
    notify_receiver receiver;
    REQUIRE(receiver.bound());
    scoped_env notify("NOTIFY_SOCKET", receiver.name().c_str());
    scoped_env usec("WATCHDOG_USEC", "200000");
    scoped_env pid("WATCHDOG_PID", nullptr);
    auto kind = run_bounded([]() -> task<errc> {
        asio::cancellation_signal cancel;
        std::optional<errc> result;
        spawn_cancellable(kind_of(netloop::watchdog_keepalive()), cancel, result);
        co_await netloop::test::yield();
        cancel.emit(asio::cancellation_type::terminal);
        while (!result) co_await netloop::test::yield();
        co_return *result;
    });
    CHECK(kind == errc::cancelled);
}

TEST_CASE(
    "listen_activated() adopts nothing without LISTEN_FDS, and a wrong LISTEN_PID throws "
    "activation_failed and removes the variables",
    "[promises][daemon]") {
    {
        scoped_env fds("LISTEN_FDS", nullptr);
        CHECK(netloop::listen_activated().empty());
    }
    scoped_env fds("LISTEN_FDS", "1");
    scoped_env pid("LISTEN_PID", std::to_string(::getpid() + 1).c_str());
    scoped_env names("LISTEN_FDNAMES", "web");
    std::optional<errc> kind;
    try {
        (void)netloop::listen_activated();
    } catch (const netloop::error& e) {
        kind = e.kind();
    }
    REQUIRE(kind);
    CHECK(*kind == errc::activation_failed);
    CHECK(std::getenv("LISTEN_FDS") == nullptr);
    CHECK(std::getenv("LISTEN_PID") == nullptr);
    CHECK(std::getenv("LISTEN_FDNAMES") == nullptr);
}

TEST_CASE("start_successor() of a program that cannot be started throws errc::spawn_failed",
          "[promises][daemon]") {
    auto kind = run_bounded([]() -> task<errc> {
        auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
        std::vector<const netloop::server*> servers{&server};
        std::vector<std::string> argv{"/nonexistent/netloop-successor"};
        auto start = netloop::start_successor(std::move(argv), std::move(servers), 5s);
        co_return co_await kind_of(std::move(start));
    });
    CHECK(kind == errc::spawn_failed);
}

TEST_CASE("with no logger set, a handler's error and a spawned task's error print nothing",
          "[promises][log]") {
    netloop::set_logger(nullptr);
    netloop::test::temp_file out;
    std::fflush(stdout);
    std::fflush(stderr);
    int saved_out = ::dup(STDOUT_FILENO);
    int saved_err = ::dup(STDERR_FILENO);
    int fd = ::open(out.path().c_str(), O_WRONLY | O_TRUNC);
    REQUIRE(fd >= 0);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
    bool served = false;
    try {
        run_bounded([&]() -> task<> {
            netloop::spawn([]() -> task<> {
                throw std::runtime_error("spawned task exploded");
                co_return;
            }());
            auto server = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
            auto at = server.local_address();
            netloop::spawn([](netloop::server& s) -> task<> {
                co_await s.serve([](netloop::connection) -> task<> {
                    throw std::runtime_error("handler exploded");
                    co_return;
                });
            }(server));
            auto client = co_await netloop::connect(at, 5s);
            std::array<std::byte, 8> buf;
            served = co_await kind_of(client.read(buf, 5s)) != errc{};
            server.close();
            while (netloop::loop::shared().spawned() > 0) co_await netloop::test::yield();
        });
    } catch (...) {
        ::dup2(saved_out, STDOUT_FILENO);
        ::dup2(saved_err, STDERR_FILENO);
        throw;
    }
    std::fflush(stdout);
    std::fflush(stderr);
    ::dup2(saved_out, STDOUT_FILENO);
    ::dup2(saved_err, STDERR_FILENO);
    ::close(saved_out);
    ::close(saved_err);
    CHECK(served);
    CHECK(out.contents().empty());
}

static_assert(std::is_same_v<netloop::task<int>, asio::awaitable<int>>);
static_assert(std::is_same_v<netloop::task<>, asio::awaitable<void>>);

TEST_CASE("a task is an asio::awaitable: it awaits an Asio timer next to netloop's calls",
          "[promises][task]") {
    auto waited = run_bounded([]() -> task<bool> {
        asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
        co_await t.async_wait(asio::use_awaitable);
        auto pair = co_await make_pair();
        co_await pair.client_side.write(std::string_view("x"), 5s);
        auto got = co_await netloop::test::read_n(pair.server_side, 1);
        co_return got.size() == 1;
    });
    CHECK(waited);
}

TEST_CASE("set_no_delay() and set_keep_alive() on a Unix socket do nothing and throw nothing",
          "[promises][unix][options]") {
    auto kind = run_bounded([]() -> task<errc> {
        auto pair = co_await make_pair(netloop::address::unix_socket("@netloop-promises-options-" +
                                                                     std::to_string(::getpid())));
        try {
            pair.server_side.set_no_delay(true);
            pair.server_side.set_keep_alive(true, 30s, 5s, 3);
            pair.client_side.set_no_delay(false);
            pair.client_side.set_keep_alive(false);
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return errc{};
    });
    CHECK(kind == errc{});
}

TEST_CASE("after start_successor(), close() leaves the Unix socket file to the successor",
          "[promises][daemon]") {
    const std::string python = "/usr/bin/python3";
    REQUIRE(std::filesystem::exists(python));
    auto path = (std::filesystem::temp_directory_path() /
                 ("netloop-promises-" + std::to_string(::getpid()) + ".sock"))
                    .string();
    // The successor: reports READY=1 on our NOTIFY_SOCKET, then waits to be stopped.
    const std::string successor =
        "import os, socket, time\n"
        "a = os.environ['NOTIFY_SOCKET']\n"
        "a = '\\0' + a[1:] if a.startswith('@') else a\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1', a)\n"
        "time.sleep(60)\n";
    pid_t pid = 0;
    bool file_left = false;
    run_bounded([&]() -> task<> {
        auto server = netloop::server::listen(netloop::address::unix_socket(path));
        std::vector<const netloop::server*> servers{&server};
        std::vector<std::string> argv{python, "-c", successor};
        auto start = netloop::start_successor(std::move(argv), std::move(servers), 20s);
        pid = co_await std::move(start);
        server.close();
        file_left = std::filesystem::exists(path);
    });
    if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    std::filesystem::remove(path);
    CHECK(pid > 0);
    CHECK(file_left);
}

TEST_CASE("set_logger() from another thread while the loop logs is safe", "[promises][log]") {
    // Under TSan (the 'threads' suite) an unguarded logger is a reported race; here, a crash.
    auto sink = std::make_shared<spdlog::sinks::null_sink_mt>();
    auto logger = std::make_shared<spdlog::logger>("netloop-promises", sink);
    logger->set_level(spdlog::level::trace);
    std::atomic<bool> done{false};
    std::thread toggler([&] {
        for (int i = 0; !done; ++i) {
            netloop::set_logger(i % 2 == 0 ? logger : nullptr);
            (void)netloop::logger();
        }
    });
    int ended = 0;
    run_bounded([&]() -> task<> {
        for (int i = 0; i < 2000; ++i) {
            netloop::spawn([](int& count) -> task<> {
                ++count;
                throw std::runtime_error("logged, or not");
                co_return;
            }(ended));
            if (i % 100 == 0) co_await netloop::test::yield();
        }
        while (netloop::loop::shared().spawned() > 0) co_await netloop::test::yield();
    });
    done = true;
    toggler.join();
    netloop::set_logger(nullptr);
    CHECK(ended == 2000);
}

#if NETLOOP_HAS_TLS
namespace {

// A TLS handshake with `at` by a raw OpenSSL client limited to `version` (and `ciphers` for TLS
// 1.2), with OpenSSL's own floors lowered: what the server accepts is the server's choice.
task<bool> handshake_succeeds(const netloop::address& at, int version, const char* ciphers) {
    asio::ssl::context ctx(asio::ssl::context::tls_client);
    ::SSL_CTX_set_security_level(ctx.native_handle(), 0);
    ::SSL_CTX_set_min_proto_version(ctx.native_handle(), version);
    ::SSL_CTX_set_max_proto_version(ctx.native_handle(), version);
    if (ciphers != nullptr) ::SSL_CTX_set_cipher_list(ctx.native_handle(), ciphers);
    ctx.set_verify_mode(asio::ssl::verify_none);
    asio::ssl::stream<asio::ip::tcp::socket> client(co_await asio::this_coro::executor, ctx);
    try {
        co_await client.next_layer().async_connect(at.endpoint(), asio::use_awaitable);
        co_await client.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
    } catch (const std::system_error&) {
        co_return false;
    }
    co_return true;
}

}  // namespace

TEST_CASE(
    "a TLS server takes TLS 1.2 with an AEAD cipher and 1.3, and refuses 1.1 and 1.2 without "
    "AEAD",
    "[promises][tls]") {
    struct outcome {
        bool tls12_aead = false;
        bool tls13 = false;
        bool tls11 = true;
        bool tls12_cbc = true;
    };
    auto r = run_bounded([]() -> task<outcome> {
        auto s = netloop::server::listen(netloop::address::parse("127.0.0.1:0"),
                                         netloop::listen_options{
                                             .tls = netloop::test::test_server_tls(),
                                         });
        netloop::spawn([](netloop::server& srv) -> task<> {
            auto conns = srv.connections();
            while (auto c = co_await conns.next()) {
            }
        }(s));
        outcome out;
        auto at = s.local_address();
        out.tls12_aead =
            co_await handshake_succeeds(at, TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256");
        out.tls13 = co_await handshake_succeeds(at, TLS1_3_VERSION, nullptr);
        out.tls11 = co_await handshake_succeeds(at, TLS1_1_VERSION, nullptr);
        out.tls12_cbc =
            co_await handshake_succeeds(at, TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA256");
        s.close();
        while (netloop::loop::shared().spawned() > 0) co_await netloop::test::yield();
        co_return out;
    });
    CHECK(r.tls12_aead);
    CHECK(r.tls13);
    CHECK_FALSE(r.tls11);
    CHECK_FALSE(r.tls12_cbc);
}
#endif

#if !NETLOOP_HAS_TLS
TEST_CASE("built without TLS, every tls_context factory throws errc::invalid_argument",
          "[promises][tls]") {
    auto kind_of_call = [](auto f) {
        try {
            f();
        } catch (const netloop::error& e) {
            return e.kind();
        }
        return errc{};
    };
    CHECK(kind_of_call([] { (void)netloop::tls_context::server("cert.pem", "key.pem"); }) ==
          errc::invalid_argument);
    CHECK(kind_of_call([] { (void)netloop::tls_context::server_from_pem("", ""); }) ==
          errc::invalid_argument);
    CHECK(kind_of_call([] { (void)netloop::tls_context::client(); }) == errc::invalid_argument);
}
#endif
