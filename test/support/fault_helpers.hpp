// SPDX-License-Identifier: MIT
// Fault-suite helpers: samples/daemon and its stats, /proc readings, forked clients, SIGPIPE.
#pragma once

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include <netloop/netloop.hpp>

#include "process.hpp"
#include "serve_helpers.hpp"
#include "temp_file.hpp"

// Sanitized builds (ASan, TSan) run the same tests with smaller counts: they are 2-10 times
// slower and use more memory per allocation. test/meson.build cannot set an environment per
// build, so the compiler says it instead.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NETLOOP_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NETLOOP_TEST_SANITIZED 1
#endif
#endif
#ifndef NETLOOP_TEST_SANITIZED
#define NETLOOP_TEST_SANITIZED 0
#endif

namespace netloop::test {

using namespace std::chrono_literals;

inline constexpr bool sanitized = NETLOOP_TEST_SANITIZED != 0;

// `normal` in the plain build, `reduced` under a sanitizer.
template <typename T>
constexpr T scaled(T normal, T reduced) {
    return sanitized ? reduced : normal;
}

// Under ASan, environment for a child whose RSS is measured over time: the same ASAN_OPTIONS
// with a 16 MiB quarantine instead of 256 MiB, so freed memory held for use-after-free
// detection stops growing the RSS within seconds. Empty otherwise.
inline std::vector<std::string> small_quarantine_env() {
    if (!sanitized) return {};
    const char* inherited = std::getenv("ASAN_OPTIONS");
    std::string options = inherited != nullptr ? inherited : "";
    if (!options.empty()) options += ':';
    return {"ASAN_OPTIONS=" + options + "quarantine_size_mb=16"};
}

// Under UBSan, environment for a child that runs out of file descriptors on purpose: UBSan's vptr
// check probes memory through a pipe(), which then fails, and it reports "invalid vptr" with
// "<memory cannot be printed>" for sound objects (LLVM 14's IsAccessibleMemoryRange). A
// suppression cannot match an object whose type it could not read, so the child gets
// halt_on_error=0 instead, and false_vptr_reports_only() checks its log. Empty otherwise.
inline std::vector<std::string> out_of_fds_env() {
    if (!sanitized) return {};
    const char* inherited = std::getenv("UBSAN_OPTIONS");
    std::string options = inherited != nullptr ? inherited : "";
    if (!options.empty()) options += ':';
    return {"UBSAN_OPTIONS=" + options + "halt_on_error=0"};
}

// True if every UBSan report in `log` is one whose memory probe failed (see out_of_fds_env()).
inline bool false_vptr_reports_only(const std::string& log) {
    auto count = [&log](const std::string& what) {
        std::size_t n = 0;
        for (auto at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
        return n;
    };
    return count("runtime error:") == count("<memory cannot be printed>");
}

// A line the daemon logs on SIGUSR1 (and after its drain):
// `stats: accepted=.. rejected=.. active=.. peak_active=.. bytes_read=.. bytes_written=..
// accept_errors=.. handshake_failures=..` (the fields read here).
struct daemon_stats {
    std::uint64_t accepted = 0;
    std::uint64_t rejected = 0;
    std::uint64_t active = 0;
    std::uint64_t peak_active = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t accept_errors = 0;
};

// The stats lines in `log`, in order.
inline std::vector<daemon_stats> stats_lines(const std::string& log) {
    std::vector<daemon_stats> out;
    std::size_t at = 0;
    while ((at = log.find("stats: accepted=", at)) != std::string::npos) {
        auto end = log.find('\n', at);
        auto line = log.substr(at, end == std::string::npos ? std::string::npos : end - at);
        daemon_stats s;
        unsigned long long v[7] = {};
        int got = std::sscanf(line.c_str(),
                              "stats: accepted=%llu rejected=%llu active=%llu peak_active=%llu "
                              "bytes_read=%llu bytes_written=%llu accept_errors=%llu",
                              &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]);
        if (got == 7 && end != std::string::npos) {  // a line still being written is skipped
            s = {v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
            out.push_back(s);
        }
        at += 1;
    }
    return out;
}

// Sets this process's soft RLIMIT_NOFILE to its hard limit (async-signal-safe: usable as a
// child_process `in_child` hook).
inline void raise_nofile_limit() noexcept {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        (void)::setrlimit(RLIMIT_NOFILE, &limit);
    }
}

inline std::uint64_t nofile_limit() noexcept {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
    return limit.rlim_cur;
}

// VmRSS of `pid` (0: this process) in KiB, 0 if it is gone.
inline long rss_kib(pid_t pid = 0) {
    std::string path = pid == 0 ? "/proc/self/status" : "/proc/" + std::to_string(pid) + "/status";
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        long kib = 0;
        if (std::sscanf(line.c_str(), "VmRSS: %ld kB", &kib) == 1) return kib;
    }
    return 0;
}

// Open file descriptors of `pid`, -1 if it is gone.
inline long fd_count(pid_t pid) {
    std::error_code ec;
    std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec);
    if (ec) return -1;
    long n = 0;
    for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
        if (ec) return -1;
        ++n;
    }
    return n;
}

// The state letter of `pid` in /proc/<pid>/stat ('R', 'S', 'T' for stopped, ...), 0 if gone.
inline char process_state(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto paren = text.rfind(')');
    if (paren == std::string::npos || paren + 2 >= text.size()) return 0;
    return text[paren + 2];
}

// samples/daemon on 127.0.0.1:0 as a real process, its stderr in a temp file.
class daemon_process {
public:
    explicit daemon_process(const std::vector<std::string>& flags, void (*in_child)() = nullptr,
                            const std::vector<std::string>& env = {})
        : process_(args(flags), env, err_.path(), in_child) {
        port_ = process_.announced_port();
    }

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] address at() const { return address::ipv4("127.0.0.1", port_); }
    [[nodiscard]] pid_t pid() const noexcept { return process_.pid(); }
    [[nodiscard]] child_process& process() noexcept { return process_; }
    [[nodiscard]] std::string log() const { return err_.contents(); }

    // Asks for a stats line (SIGUSR1) and waits for it, at most `limit`; runs on the loop.
    // The daemon installs its SIGUSR1 handler just after it announces, so call this only once a
    // connection has been served (which proves the handler tasks have started).
    [[nodiscard]] task<std::optional<daemon_stats>> stats(duration limit = 10s) {
        auto before = stats_lines(log()).size();
        process_.signal(SIGUSR1);
        std::vector<daemon_stats> lines;
        auto arrived = [&] {
            lines = stats_lines(log());
            return lines.size() > before;
        };
        if (!co_await eventually(arrived, limit)) co_return std::nullopt;
        co_return lines.back();
    }

    // Polls stats() until `done(stats)` holds or `limit` passes; the last stats seen.
    template <typename Pred>
    [[nodiscard]] task<std::optional<daemon_stats>> stats_until(Pred done, duration limit = 20s) {
        auto until = std::chrono::steady_clock::now() + limit;
        std::optional<daemon_stats> last;
        for (;;) {
            last = co_await stats();
            if (!last || done(*last) || std::chrono::steady_clock::now() >= until) co_return last;
            asio::steady_timer pause(co_await asio::this_coro::executor, 50ms);
            asio::error_code ignored;
            co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        }
    }

private:
    static std::vector<std::string> args(const std::vector<std::string>& flags) {
        std::vector<std::string> argv{sample_path("daemon"), "127.0.0.1:0", "--log-level", "info"};
        argv.insert(argv.end(), flags.begin(), flags.end());
        return argv;
    }

    temp_file err_;
    child_process process_;
    std::uint16_t port_ = 0;
};

// Counts SIGPIPEs while alive instead of letting one kill the process.
class sigpipe_counter {
public:
    sigpipe_counter() {
        count_().store(0);
        struct sigaction sa {};
        sa.sa_handler = [](int) { count_().fetch_add(1); };
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGPIPE, &sa, &old_);
    }
    ~sigpipe_counter() { ::sigaction(SIGPIPE, &old_, nullptr); }
    sigpipe_counter(const sigpipe_counter&) = delete;
    sigpipe_counter& operator=(const sigpipe_counter&) = delete;

    [[nodiscard]] int count() const noexcept { return count_().load(); }

private:
    static std::atomic<int>& count_() {
        static std::atomic<int> n{0};
        return n;
    }
    struct sigaction old_ {};
};

// A blocking loopback client socket with 30 s send/receive bounds (which bound connect() too);
// `receive_buffer` > 0 sets SO_RCVBUF before the connect. -1 on failure.
inline int blocking_connect(std::uint16_t port, int receive_buffer = 0) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    timeval tv{30, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (receive_buffer > 0) {
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    }
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// A child made by fork() that waits for a port from the parent, runs `body(port)` with blocking
// sockets, and _exits with its result. Fork it while the test process has one thread (outside
// run_bounded); the child never touches the parent's loop. Killed by PID and reaped if the test
// ends first.
class forked_client {
public:
    explicit forked_client(int (*body)(std::uint16_t port)) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            ::close(fds[1]);
            std::uint16_t port = 0;
            pollfd p{fds[0], POLLIN, 0};
            if (::poll(&p, 1, 60000) != 1 || ::read(fds[0], &port, sizeof port) != sizeof port) {
                ::_exit(100);
            }
            ::_exit(body(port));
        }
        ::close(fds[0]);
        to_child_ = fds[1];
    }
    ~forked_client() {
        if (!status_) {
            ::kill(pid_, SIGCONT);
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
        ::close(to_child_);
    }
    forked_client(const forked_client&) = delete;
    forked_client& operator=(const forked_client&) = delete;

    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

    void start(std::uint16_t port) const { (void)!::write(to_child_, &port, sizeof port); }

    // The exit status if the child has exited (reaps it), else nullopt. Does not wait.
    std::optional<int> poll_exit() {
        if (status_) return status_;
        int st = 0;
        if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
        return status_;
    }

private:
    pid_t pid_ = -1;
    int to_child_ = -1;
    std::optional<int> status_;
};

}  // namespace netloop::test
