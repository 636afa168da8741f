// SPDX-License-Identifier: MIT
// samples/daemon under systemd's protocols: socket activation by the real
// systemd-socket-activate, readiness and watchdog on a NOTIFY_SOCKET the test owns, bad
// activation environments, and a restart that hands the socket over without losing a client.
#include <array>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <optional>
#include <poll.h>
#include <sstream>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/log_capture.hpp"
#include "support/loopback.hpp"
#include "support/process.hpp"

using namespace std::chrono_literals;
using netloop::address;
using netloop::task;
using netloop::test::child_process;
using netloop::test::run_bounded;

namespace {

struct temp_dir {
    temp_dir() {
        char pattern[] = "/tmp/netloop-activation-XXXXXX";
        path = ::mkdtemp(pattern);
    }
    ~temp_dir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string path;
};

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Waits (bounded) until the file holds `text`.
bool wait_for_text(const std::string& path, const std::string& text,
                   std::chrono::milliseconds limit = 10s) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
        if (slurp(path).find(text) != std::string::npos) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

// One echo of `size` bytes to 127.0.0.1:port; true if byte-exact.
bool echo_once(const address& to, std::size_t size = 1000) {
    return run_bounded([&]() -> task<bool> {
        auto c = co_await netloop::connect(to, 5s);
        auto msg = netloop::test::pattern(size, 4);
        co_await c.write(msg, 5s);
        auto back = co_await netloop::test::read_n(c, size);
        co_return back == msg;
    });
}

bool echo_once(std::uint16_t port, std::size_t size = 1000) {
    return echo_once(address::ipv4("127.0.0.1", port), size);
}

// A datagram socket at `path` (or an abstract name if it starts with '@'), as a NOTIFY_SOCKET.
class notify_listener {
public:
    explicit notify_listener(const std::string& name) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, name.data(), name.size());
        if (name[0] == '@') addr.sun_path[0] = '\0';
        auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
        bound_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0;
    }
    ~notify_listener() { ::close(fd_); }
    notify_listener(const notify_listener&) = delete;
    notify_listener& operator=(const notify_listener&) = delete;

    [[nodiscard]] bool bound() const { return bound_; }

    // The next message within `limit`, or empty.
    std::string next(std::chrono::milliseconds limit) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return {};
        char buf[512];
        auto n = ::recv(fd_, buf, sizeof buf, 0);
        return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    }

    // Waits for `state`, skipping others (watchdog keep-alives); false after `limit`.
    bool wait_for(const std::string& state, std::chrono::milliseconds limit = 10s) {
        auto until = std::chrono::steady_clock::now() + limit;
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                until - std::chrono::steady_clock::now());
            if (left.count() <= 0) return false;
            if (next(left) == state) return true;
        }
    }

private:
    int fd_ = -1;
    bool bound_ = false;
};

// A port that was free a moment ago: systemd-socket-activate takes no port 0, so the test asks
// the kernel for one, releases it and passes it on (retried if someone took it meanwhile).
std::uint16_t free_port() {
    auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
    return s.local_port();
}

void set_listen_pid_to_self() {
    char text[32] = "LISTEN_PID=";
    char digits[16];
    int n = 0;
    for (long pid = ::getpid(); pid > 0; pid /= 10) digits[n++] = static_cast<char>('0' + pid % 10);
    int at = 11;
    while (n > 0) text[at++] = digits[--n];
    text[at] = '\0';
    static char env_entry[32];
    std::memcpy(env_entry, text, sizeof text);
    ::putenv(env_entry);
}

void fd3_is_a_file_and_listen_pid_is_self() {
    int fd = ::open("/dev/null", O_RDONLY);
    ::dup2(fd, 3);
    set_listen_pid_to_self();
}

}  // namespace

TEST_CASE("the daemon serves a socket passed by systemd-socket-activate and never binds",
          "[activation]") {
    temp_dir dir;
    std::uint16_t port = 0;
    std::unique_ptr<child_process> daemon;
    for (int attempt = 0; attempt < 3 && !daemon; ++attempt) {
        port = free_port();
        auto err = dir.path + "/activate.err";
        auto p = std::make_unique<child_process>(
            std::vector<std::string>{"/usr/bin/systemd-socket-activate", "-l",
                                     "127.0.0.1:" + std::to_string(port),
                                     netloop::test::sample_path("daemon"), "--log-level", "debug"},
            std::vector<std::string>{}, err);
        if (wait_for_text(err, "Listening on")) daemon = std::move(p);
    }
    REQUIRE(daemon);
    // The activator starts the daemon on the first connection, which the daemon then serves.
    CHECK(echo_once(port, 100000));
    CHECK(daemon->announced_port() == port);
    CHECK(wait_for_text(dir.path + "/activate.err",
                        "adopted fd 3 (127.0.0.1:" + std::to_string(port)));
    CHECK(echo_once(port));
    daemon->signal(SIGTERM);
    CHECK(daemon->exited_with(0, 15s));
}

TEST_CASE("the daemon serves a Unix socket passed by systemd-socket-activate and leaves its file",
          "[activation][unix]") {
    temp_dir dir;
    auto path = dir.path + "/daemon.sock";
    auto err = dir.path + "/activate.err";
    child_process daemon(
        std::vector<std::string>{"/usr/bin/systemd-socket-activate", "-l", path,
                                 netloop::test::sample_path("daemon"), "--log-level", "debug"},
        std::vector<std::string>{}, err);
    REQUIRE(wait_for_text(err, "Listening on"));
    CHECK(echo_once(address::unix_socket(path), 100000));
    auto line = daemon.read_line();
    CHECK(line == std::optional<std::string>("listening on unix:" + path));
    CHECK(wait_for_text(err, "adopted fd 3 (unix:" + path));
    CHECK(echo_once(address::unix_socket(path)));
    daemon.signal(SIGTERM);
    CHECK(daemon.exited_with(0, 15s));
    // The file belongs to whoever made the socket (the activator here), not to the daemon.
    CHECK(::access(path.c_str(), F_OK) == 0);
    ::unlink(path.c_str());
}

TEST_CASE("the daemon reports READY=1, WATCHDOG=1 twice a second, and STOPPING=1",
          "[activation][notify]") {
    temp_dir dir;
    auto kind = GENERATE(as<std::string>{}, "path", "abstract");
    CAPTURE(kind);
    std::string name =
        kind == "path" ? dir.path + "/notify.sock" : "@netloop-test-" + std::to_string(::getpid());
    notify_listener notifications(name);
    REQUIRE(notifications.bound());
    child_process daemon({netloop::test::sample_path("daemon"), "127.0.0.1:0"},
                         {"NOTIFY_SOCKET=" + name, "WATCHDOG_USEC=200000"});
    auto port = daemon.announced_port();
    REQUIRE(port != 0);
    CHECK(notifications.wait_for("READY=1"));
    // Keep-alives every 100 ms: at least two in one second (a generous bound on a wait).
    int keepalives = 0;
    auto until = std::chrono::steady_clock::now() + 1s;
    while (std::chrono::steady_clock::now() < until) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            until - std::chrono::steady_clock::now());
        if (notifications.next(std::max(left, 1ms)) == "WATCHDOG=1") ++keepalives;
    }
    CHECK(keepalives >= 2);
    CHECK(echo_once(port));
    daemon.signal(SIGTERM);
    CHECK(notifications.wait_for("STOPPING=1"));
    CHECK(daemon.exited_with(0, 15s));
}

TEST_CASE("a bad activation environment is a clear error and exit status 1", "[activation]") {
    temp_dir dir;
    auto err = dir.path + "/daemon.err";
    SECTION("LISTEN_PID of another process") {
        child_process daemon({netloop::test::sample_path("daemon"), "127.0.0.1:0"},
                             {"LISTEN_FDS=1", "LISTEN_PID=1"}, err);
        CHECK(daemon.exited_with(1, 10s));
        CHECK(slurp(err).find("LISTEN_PID=1 is not this process") != std::string::npos);
    }
    SECTION("an fd that is not a socket") {
        child_process daemon({netloop::test::sample_path("daemon"), "127.0.0.1:0"},
                             {"LISTEN_FDS=1"}, err, fd3_is_a_file_and_listen_pid_is_self);
        CHECK(daemon.exited_with(1, 10s));
        CHECK(slurp(err).find("fd 3 is not a socket") != std::string::npos);
    }
    SECTION("LISTEN_FDNAMES that does not match LISTEN_FDS") {
        child_process daemon({netloop::test::sample_path("daemon"), "127.0.0.1:0"},
                             {"LISTEN_FDS=2", "LISTEN_FDNAMES=web"}, err, set_listen_pid_to_self);
        CHECK(daemon.exited_with(1, 10s));
        CHECK(slurp(err).find("LISTEN_FDNAMES names 1 sockets, LISTEN_FDS 2") != std::string::npos);
    }
}

TEST_CASE("SIGUSR2 hands the socket to a new process: no client refused, reset or corrupted",
          "[activation][restart]") {
    // The successor outlives its parent; as a subreaper, this process gets to reap it.
    REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    temp_dir dir;
    auto err = dir.path + "/daemon.err";
    child_process daemon({netloop::test::sample_path("daemon"), "127.0.0.1:0"}, {}, err);
    auto port = daemon.announced_port();
    REQUIRE(port != 0);

    // 20 clients connect, echo and close in a loop on their own thread and loop.
    std::atomic<bool> stop{false};
    std::atomic<int> ok{0};
    std::atomic<int> failed{0};
    std::string first_failure;
    std::thread clients([&] {
        netloop::loop l;
        netloop::run(
            [&]() -> task<> {
                int running = 20;
                for (int i = 0; i < 20; ++i) {
                    netloop::spawn([](std::uint16_t p, unsigned seed, std::atomic<bool>& stop,
                                      std::atomic<int>& ok, std::atomic<int>& failed,
                                      std::string& why, int& running) -> task<> {
                        for (unsigned round = 0; !stop; ++round) {
                            try {
                                auto c =
                                    co_await netloop::connect(address::ipv4("127.0.0.1", p), 5s);
                                auto msg = netloop::test::pattern(2000 + (seed * 31 + round) % 6000,
                                                                  seed + round);
                                co_await c.write(msg, 5s);
                                auto back = co_await netloop::test::read_n(c, msg.size(), 5s);
                                if (back == msg) {
                                    ++ok;
                                } else {
                                    ++failed;
                                }
                            } catch (const std::exception& e) {
                                if (failed++ == 0) why = e.what();
                            }
                        }
                        --running;
                    }(port, static_cast<unsigned>(i), stop, ok, failed, first_failure, running));
                }
                while (running > 0) co_await netloop::test::sleep_for(5ms);
            },
            netloop::run_options{.cancel_on_signal = false, .rethrow = true}, l);
    });

    auto wait_ok = [&](int at_least) {
        auto until = std::chrono::steady_clock::now() + 20s;
        while (ok < at_least && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(5ms);
        }
        return ok >= at_least;
    };
    CHECK(wait_ok(200));
    daemon.signal(SIGUSR2);
    bool old_exited = daemon.exited_with(0, 20s);
    int at_handover = ok;
    CHECK(wait_ok(at_handover + 200));  // the successor serves on
    stop = true;
    clients.join();

    CHECK(old_exited);
    CHECK(failed == 0);
    CAPTURE(first_failure);
    auto log = slurp(err);
    auto at = log.find("handed over to pid ");
    REQUIRE(at != std::string::npos);
    pid_t successor = static_cast<pid_t>(std::stol(log.substr(at + 19)));
    CHECK(daemon.read_line(5s) == "listening on 127.0.0.1:" + std::to_string(port));
    CHECK(echo_once(port));
    ::kill(successor, SIGTERM);
    int status = -1;
    auto until = std::chrono::steady_clock::now() + 15s;
    while (::waitpid(successor, &status, WNOHANG) == 0 &&
           std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(10ms);
    }
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

namespace {

// Sends `state` to the datagram socket `name` (an abstract one if it starts with '@') from the
// calling process. Async-signal-safe: used in forked children.
bool send_state(const char* name, const char* state) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::size_t len = std::strlen(name);
    if (len == 0 || len >= sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path, name, len);
    if (name[0] == '@') addr.sun_path[0] = '\0';
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    auto sent = ::sendto(fd, state, std::strlen(state), 0, reinterpret_cast<sockaddr*>(&addr),
                         static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
    ::close(fd);
    return sent >= 0;
}

// This test program is its own successor in the start_successor() test below: run with
// NETLOOP_TEST_SUCCESSOR_GATE set, it waits (at most 30 s) for that file to exist, sends
// READY=1 to its NOTIFY_SOCKET from its own pid, and waits for SIGTERM. It does so before
// main(), so Catch2 never runs in it.
[[maybe_unused]] const bool successor_role = [] {
    const char* gate = std::getenv("NETLOOP_TEST_SUCCESSOR_GATE");
    if (gate == nullptr) return false;
    for (int i = 0; i < 6000 && ::access(gate, F_OK) != 0; ++i) ::usleep(5000);
    const char* notify_socket = std::getenv("NOTIFY_SOCKET");
    if (notify_socket == nullptr || !send_state(notify_socket, "READY=1")) ::_exit(3);
    for (;;) ::pause();
}();

// The abstract name of a start_successor() notify socket of this process, from /proc/net/unix
// (where any local process can find it), with its leading '@'; empty if there is none.
std::string find_successor_socket() {
    std::ifstream in("/proc/net/unix");
    std::string line;
    const std::string prefix = "@netloop-successor-" + std::to_string(::getpid()) + "-";
    while (std::getline(in, line)) {
        auto at = line.find(prefix);
        if (at != std::string::npos) return line.substr(at);
    }
    return {};
}

task<> start_into(std::string program, const netloop::server* s, std::optional<pid_t>& pid,
                  std::string& failure) {
    try {
        std::vector<std::string> argv{std::move(program)};
        std::vector<const netloop::server*> servers{s};
        pid = co_await netloop::start_successor(std::move(argv), std::move(servers), 30s);
    } catch (const std::exception& e) {
        failure = e.what();
    }
}

}  // namespace

TEST_CASE(
    "start_successor() is made ready only by the successor itself: a READY=1 that another local "
    "process sends first is ignored and logged",
    "[activation][restart]") {
    temp_dir dir;
    const std::string gate = dir.path + "/gate";
    REQUIRE(::setenv("NETLOOP_TEST_SUCCESSOR_GATE", gate.c_str(), 1) == 0);
    struct unset_gate {
        ~unset_gate() { ::unsetenv("NETLOOP_TEST_SUCCESSOR_GATE"); }
    } unset;
    std::array<char, 4096> self{};
    auto self_len = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
    REQUIRE(self_len > 0);
    netloop::test::log_capture log(spdlog::level::info);
    struct result {
        std::string socket_name;
        pid_t impostor = -1;
        bool impostor_sent = false;
        bool ignored_logged = false;
        bool ready_before_gate = false;
        std::optional<pid_t> successor;
        std::string failure;
    };
    auto r = run_bounded(
        [&]() -> task<result> {
            result r;
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
            netloop::spawn(start_into(std::string(self.data(), static_cast<std::size_t>(self_len)),
                                      &s, r.successor, r.failure));
            for (int i = 0; i < 2000 && r.socket_name.empty(); ++i) {
                co_await netloop::test::sleep_for(5ms);
                r.socket_name = find_successor_socket();
            }
            if (r.socket_name.empty()) co_return r;
            // Another local process (not the successor, which waits for the gate) sends READY=1.
            r.impostor = ::fork();
            if (r.impostor == 0) ::_exit(send_state(r.socket_name.c_str(), "READY=1") ? 0 : 1);
            int status = -1;
            for (int i = 0; i < 2000 && ::waitpid(r.impostor, &status, WNOHANG) == 0; ++i) {
                co_await netloop::test::sleep_for(5ms);
            }
            r.impostor_sent = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            const std::string ignored =
                "ignored a notification from pid " + std::to_string(r.impostor);
            for (int i = 0; i < 2000 && !r.successor && r.failure.empty() && !log.contains(ignored);
                 ++i) {
                co_await netloop::test::sleep_for(5ms);
            }
            r.ignored_logged = log.contains(ignored);
            r.ready_before_gate = r.successor.has_value() || !r.failure.empty();
            // Now the successor sends its own READY=1.
            std::ofstream(gate).put('\n');
            for (int i = 0; i < 4000 && !r.successor && r.failure.empty(); ++i) {
                co_await netloop::test::sleep_for(5ms);
            }
            co_return r;
        },
        40s);
    // The successor, if it started, is ours to stop (by its pid, bounded).
    auto stop = [](pid_t pid) {
        ::kill(pid, SIGTERM);
        int status = 0;
        for (int i = 0; i < 2000 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) {
            std::this_thread::sleep_for(5ms);
        }
    };
    if (r.successor) stop(*r.successor);
    REQUIRE_FALSE(r.socket_name.empty());
    CHECK(r.impostor_sent);
    CHECK_FALSE(r.ready_before_gate);
    CHECK(r.ignored_logged);
    CAPTURE(r.failure);
    REQUIRE(r.successor.has_value());
    CHECK(*r.successor != r.impostor);
}
