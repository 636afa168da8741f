// SPDX-License-Identifier: MIT
// Socket activation, sd_notify, the watchdog, and start_successor, without libsystemd.
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio/local/datagram_protocol.hpp>

#include <netloop/daemon.hpp>
#include <netloop/error.hpp>

#include "logging.hpp"
#include "server_state.hpp"

extern char** environ;

namespace netloop {

// What follows uses Linux's abstract socket names, SO_DOMAIN, SOCK_CLOEXEC, pipe2 and
// close_range: Linux only. Elsewhere the calls say so (errc::not_supported) instead of failing
// to build or misbehaving.
#if defined(__linux__)
namespace {

constexpr int first_fd = 3;  // SD_LISTEN_FDS_START

std::optional<long> env_number(const char* name) {
    const char* text = std::getenv(name);
    if (text == nullptr) return std::nullopt;
    long value = -1;
    auto end = text + std::strlen(text);
    auto [at, ec] = std::from_chars(text, end, value);
    if (ec != std::errc() || at != end || *text == '\0') return -1;
    return value;
}

[[noreturn]] void bad_activation(const std::string& why, int sys_errno = 0) {
    ::unsetenv("LISTEN_PID");
    ::unsetenv("LISTEN_FDS");
    ::unsetenv("LISTEN_FDNAMES");
    throw error(errc::activation_failed, "socket activation (" + why + ")", sys_errno);
}

int sockopt(int fd, int level, int name) {
    int value = 0;
    socklen_t len = sizeof value;
    if (::getsockopt(fd, level, name, &value, &len) != 0) return -1;
    return value;
}

// The checks of one inherited fd; the reason it cannot be adopted, or empty.
std::string why_not_listening_stream(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return "fd " + std::to_string(fd) + " is not open";
    if (!S_ISSOCK(st.st_mode)) return "fd " + std::to_string(fd) + " is not a socket";
    if (sockopt(fd, SOL_SOCKET, SO_TYPE) != SOCK_STREAM) {
        return "fd " + std::to_string(fd) + " is not a stream socket";
    }
    int family = sockopt(fd, SOL_SOCKET, SO_DOMAIN);
    if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) {
        return "fd " + std::to_string(fd) + " is not an IPv4, IPv6 or Unix socket";
    }
    if (sockopt(fd, SOL_SOCKET, SO_ACCEPTCONN) != 1) {
        return "fd " + std::to_string(fd) + " is not listening";
    }
    return {};
}

}  // namespace

std::vector<server> listen_activated(loop& l) { return listen_activated(listen_options{}, l); }

std::vector<server> listen_activated(const listen_options& options, loop& l) {
    auto fds = env_number("LISTEN_FDS");
    if (!fds) return {};
    auto pid = env_number("LISTEN_PID");
    if (!pid) bad_activation("LISTEN_FDS without LISTEN_PID");
    if (*pid != static_cast<long>(::getpid())) {
        bad_activation("LISTEN_PID=" + std::to_string(*pid) + " is not this process (" +
                       std::to_string(::getpid()) + ")");
    }
    if (*fds < 1 || *fds > 1024) bad_activation("LISTEN_FDS is not a count of sockets");
    if (const char* names = std::getenv("LISTEN_FDNAMES"); names != nullptr) {
        long count = 1;
        for (const char* c = names; *c != '\0'; ++c) count += *c == ':' ? 1 : 0;
        if (count != *fds) {
            bad_activation("LISTEN_FDNAMES names " + std::to_string(count) +
                           " sockets, LISTEN_FDS " + std::to_string(*fds));
        }
    }
    // Check them all before adopting any: on error nothing is adopted.
    for (int fd = first_fd; fd < first_fd + *fds; ++fd) {
        if (auto why = why_not_listening_stream(fd); !why.empty()) bad_activation(why);
    }
    if (options.max_preparing == 0) {
        throw error(errc::invalid_argument, "listen_activated (max_preparing 0)");
    }
    auto tls = detail::server_tls(options.tls, address());
    std::vector<server> servers;
    for (int fd = first_fd; fd < first_fd + *fds; ++fd) {
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
        int family = sockopt(fd, SOL_SOCKET, SO_DOMAIN);
        detail::stream_acceptor acceptor(l.context());
        asio::error_code ec;
        acceptor.assign(asio::generic::stream_protocol(family, family == AF_UNIX ? 0 : IPPROTO_TCP),
                        fd, ec);
        if (ec) bad_activation("adopt fd " + std::to_string(fd), ec.value());
        acceptor.non_blocking(true, ec);
        auto state = std::make_shared<detail::server_state>(l, std::move(acceptor));
        state->reuse_port = sockopt(fd, SOL_SOCKET, SO_REUSEPORT) == 1;
        state->tls = tls;
        state->handshake_timeout = options.handshake_timeout;
        state->proxy = {options.proxy_protocol, options.proxy_from, options.proxy_header_timeout};
        state->max_preparing = options.max_preparing;
        detail::log(spdlog::level::debug, "adopted fd {} ({}) from LISTEN_FDS", fd,
                    state->local.to_string());
        servers.push_back(detail::server_access::make(std::move(state)));
    }
    ::unsetenv("LISTEN_PID");
    ::unsetenv("LISTEN_FDS");
    ::unsetenv("LISTEN_FDNAMES");
    return servers;
}

bool notify(std::string_view state) noexcept {
    const char* where = std::getenv("NOTIFY_SOCKET");
    if (where == nullptr || where[0] == '\0') return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::size_t len = std::strlen(where);
    if ((where[0] != '/' && where[0] != '@') || len >= sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path, where, len);
    if (where[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
    auto sent = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                         reinterpret_cast<const sockaddr*>(&addr), size);
    ::close(fd);
    return sent == static_cast<ssize_t>(state.size());
}

bool notify_status(std::string_view text) noexcept {
    try {
        return notify("STATUS=" + std::string(text));
    } catch (...) {
        return false;
    }
}

task<> watchdog_keepalive() {
    auto usec = env_number("WATCHDOG_USEC");
    if (!usec || *usec <= 0) co_return;
    if (auto pid = env_number("WATCHDOG_PID"); pid && *pid != static_cast<long>(::getpid())) {
        co_return;
    }
    auto interval = std::chrono::microseconds(*usec / 2);
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
        (void)notify("WATCHDOG=1");
        timer.expires_after(interval);
        auto [ec] = co_await timer.async_wait(detail::use_tuple);
        if (ec) throw error(errc::cancelled, "watchdog keep-alive");
    }
}

namespace {

// Everything the child needs, made before fork(): after it only async-signal-safe calls.
struct successor_plan {
    std::vector<std::string> argv;
    std::vector<std::string> env;
    std::vector<int> fds;
    std::string pid_var = "LISTEN_PID=" + std::string(20, '\0');
    // execve()'s arrays, pointing into the strings above: made before fork() too, since
    // malloc() is not async-signal-safe (another thread may hold its lock in the child).
    std::vector<char*> args;
    std::vector<char*> envp;

    void prepare() {
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        for (auto& e : env) envp.push_back(e.data());
        envp.push_back(pid_var.data());
        envp.push_back(nullptr);
    }
};

[[noreturn]] void become_successor(successor_plan& plan, int report_fd) {
    // Move the sockets out of the way first, then to 3, 4, ...: a source may sit on a target.
    int n = static_cast<int>(plan.fds.size());
    std::vector<int>& moved = plan.fds;
    for (int i = 0; i < n; ++i) moved[i] = ::fcntl(moved[i], F_DUPFD, first_fd + n + 16);
    for (int i = 0; i < n; ++i) {
        if (moved[i] < 0 || ::dup2(moved[i], first_fd + i) < 0) {
            int e = errno;
            (void)!::write(report_fd, &e, sizeof e);
            ::_exit(127);
        }
    }
    // Nothing else of ours may leak into the successor (client sockets above all: it would
    // hold them open after we close them). close_range() is Linux 5.9; else one by one.
    unsigned from = static_cast<unsigned>(first_fd + n);
    auto report = static_cast<unsigned>(report_fd);  // kept until exec: it is O_CLOEXEC
    bool closed = report >= from
                      ? (report == from || ::syscall(SYS_close_range, from, report - 1, 0) == 0) &&
                            ::syscall(SYS_close_range, report + 1, ~0U, 0) == 0
                      : ::syscall(SYS_close_range, from, ~0U, 0) == 0;
    if (!closed) {
        rlimit lim{};
        ::getrlimit(RLIMIT_NOFILE, &lim);
        for (unsigned fd = from; fd < lim.rlim_cur && fd < 65536; ++fd) {
            if (static_cast<int>(fd) != report_fd) ::close(static_cast<int>(fd));
        }
    }
    // LISTEN_PID is this process: write its digits into the reserved room.
    char digits[20];
    int len = 0;
    for (long pid = ::getpid(); pid > 0; pid /= 10)
        digits[len++] = static_cast<char>('0' + pid % 10);
    char* out = plan.pid_var.data() + std::strlen("LISTEN_PID=");
    for (int i = 0; i < len; ++i) out[i] = digits[len - 1 - i];
    out[len] = '\0';
    ::sigset_t all;
    ::sigemptyset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);
    ::execve(plan.args[0], plan.args.data(), plan.envp.data());
    int e = errno;
    (void)!::write(report_fd, &e, sizeof e);
    ::_exit(127);
}

struct notification {
    std::size_t size = 0;
    pid_t sender = 0;  // 0: the kernel attached no credentials
};

// One datagram from the notify socket, without blocking, with its sender's pid (SO_PASSCRED);
// nullopt if none is there or its receive failed.
std::optional<notification> receive_notification(int fd, std::array<char, 512>& into) noexcept {
    iovec data{into.data(), into.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    msghdr m{};
    m.msg_iov = &data;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    ssize_t n = 0;
    do {
        n = ::recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return std::nullopt;
    notification out;
    out.size = static_cast<std::size_t>(n);
    for (auto* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
            c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
            ucred who{};
            std::memcpy(&who, CMSG_DATA(c), sizeof who);
            out.sender = who.pid;
        }
    }
    return out;
}

}  // namespace

task<pid_t> start_successor(std::vector<std::string> argv, std::vector<const server*> servers,
                            duration ready_timeout) {
    if (argv.empty() || servers.empty()) {
        throw error(errc::invalid_argument, "start successor (no program or no server)");
    }
    auto executor = co_await asio::this_coro::executor;
    static std::atomic<int> counter{0};
    std::string name = std::string(1, '\0') + "netloop-successor-" + std::to_string(::getpid()) +
                       "-" + std::to_string(counter++);
    asio::local::datagram_protocol::socket ready(executor);
    asio::error_code ec;
    ready.open(asio::local::datagram_protocol(), ec);
    if (!ec) ready.bind(asio::local::datagram_protocol::endpoint(name), ec);
    if (ec) throw error(errc::spawn_failed, "start successor: notify socket", ec.value());
    // Any local process can find an abstract name (/proc/net/unix): with SO_PASSCRED the kernel
    // attaches each sender's pid to its datagram, so only the successor's own READY=1 counts.
    int pass_credentials = 1;
    if (::setsockopt(ready.native_handle(), SOL_SOCKET, SO_PASSCRED, &pass_credentials,
                     sizeof pass_credentials) != 0) {
        throw error(errc::spawn_failed, "start successor: notify socket (SO_PASSCRED)", errno);
    }

    successor_plan plan;
    plan.argv = std::move(argv);
    for (char** e = environ; *e != nullptr; ++e) {
        std::string_view var(*e);
        if (var.starts_with("LISTEN_") || var.starts_with("NOTIFY_SOCKET=")) continue;
        plan.env.emplace_back(var);
    }
    plan.env.push_back("LISTEN_FDS=" + std::to_string(servers.size()));
    plan.env.push_back("NOTIFY_SOCKET=@" + name.substr(1));
    for (const auto* s : servers) plan.fds.push_back(s->native_handle());
    plan.prepare();

    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) {
        throw error(errc::spawn_failed, "start successor: pipe", errno);
    }
    pid_t pid = ::fork();
    if (pid < 0) {
        int e = errno;
        ::close(report[0]);
        ::close(report[1]);
        throw error(errc::spawn_failed, "start successor: fork", e);
    }
    if (pid == 0) become_successor(plan, report[1]);
    ::close(report[1]);
    // The pipe closes on exec (O_CLOEXEC): EOF means the program runs; an int is exec's errno.
    int exec_errno = 0;
    ssize_t got = 0;
    do {
        got = ::read(report[0], &exec_errno, sizeof exec_errno);
    } while (got < 0 && errno == EINTR);
    ::close(report[0]);
    if (got == static_cast<ssize_t>(sizeof exec_errno)) {
        ::waitpid(pid, nullptr, 0);
        throw error(errc::spawn_failed, "start successor: exec " + plan.argv[0], exec_errno);
    }

    // Shared with the timer's handler, which may run after we return.
    struct waiting {
        waiting(asio::local::datagram_protocol::socket s, const asio::any_io_executor& e)
            : socket(std::move(s)), limit(e) {}
        asio::local::datagram_protocol::socket socket;
        asio::steady_timer limit;
    };
    auto wait = std::make_shared<waiting>(std::move(ready), executor);
    wait->limit.expires_after(ready_timeout);
    wait->limit.async_wait([wait](const asio::error_code& wait_ec) {
        asio::error_code ignored;
        if (!wait_ec) wait->socket.cancel(ignored);
    });
    std::array<char, 512> message;
    bool is_ready = false;
    while (!is_ready) {
        auto [wait_ec] = co_await wait->socket.async_wait(
            asio::local::datagram_protocol::socket::wait_read, detail::use_tuple);
        if (wait_ec) break;
        auto got = receive_notification(wait->socket.native_handle(), message);
        if (!got) continue;  // nothing after all (EAGAIN), or an error of this datagram alone
        if (got->sender != pid) {
            detail::log(spdlog::level::warn,
                        "start successor: ignored a notification from pid {} (the successor is "
                        "pid {})",
                        got->sender, pid);
            continue;
        }
        std::string_view text(message.data(), got->size);
        is_ready = text == "READY=1" || text.starts_with("READY=1\n") ||
                   text.find("\nREADY=1") != std::string_view::npos;
    }
    wait->limit.cancel();
    if (!is_ready) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw error(errc::spawn_failed, "start successor " + plan.argv[0] + " (not ready in time)");
    }
    detail::log(spdlog::level::info, "successor pid {} is ready", pid);
    // The successor listens on the same sockets now: a Unix socket file is its to keep.
    for (const auto* s : servers) detail::server_access::state(*s).keep_socket_file();
    co_return pid;
}

#else

std::vector<server> listen_activated(loop& l) { return listen_activated(listen_options{}, l); }

std::vector<server> listen_activated(const listen_options&, loop&) {
    if (std::getenv("LISTEN_FDS") == nullptr) return {};
    throw error(errc::not_supported, "socket activation (LISTEN_FDS)");
}

bool notify(std::string_view) noexcept { return false; }

bool notify_status(std::string_view) noexcept { return false; }

task<> watchdog_keepalive() { co_return; }

task<pid_t> start_successor(std::vector<std::string>, std::vector<const server*>, duration) {
    throw error(errc::not_supported, "start successor");
    co_return 0;
}

#endif

}  // namespace netloop
