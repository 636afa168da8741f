// SPDX-License-Identifier: MIT
// load: a loopback TCP load generator for echo servers (modes echo, connect, idle), raw epoll.
//
// One thread, non-blocking sockets, level-triggered epoll: the generator should cost as little as
// possible, so that on a pinned core it is the server that runs out of CPU first. Every echoed
// byte is checked against the pseudo-random stream that was sent. One machine-readable line
// `RESULT mode=... key=value ...` goes to stdout, a short summary to stderr. The run always ends by
// itself: a hard wall-clock bound (`--timeout`) is checked by the loop and backed by alarm().

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <signal.h>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <type_traits>
#include <unistd.h>
#include <vector>

namespace {

using i64 = std::int64_t;
using u64 = std::uint64_t;

i64 now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return i64{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

i64 seconds_to_ns(double s) { return static_cast<i64>(s * 1e9); }

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "load: %s\n", what.c_str());
    std::exit(2);
}

// ---- options ---------------------------------------------------------------------------------

struct options {
    std::string mode;
    std::string addr_text;
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    int conns = 50;
    std::size_t size = 64;
    int inflight = 1;
    double duration = 3.0;  // seconds of measurement (echo, connect) or of holding (idle)
    bool duration_set = false;
    u64 messages = 0;  // echo, connect: stop after this many (0: run for the duration)
    double warmup = 0.5;
    bool warmup_set = false;
    double timeout = 0;  // hard wall-clock bound for the whole run; 0: derived
    int server_pid = 0;
    int max_pending = 128;  // connects in flight while opening connections
    u64 seed = 0x6e65746c6f6f70;
};

void usage() {
    std::fputs(
        "usage: load MODE --addr HOST:PORT [options]\n"
        "  MODE: echo | connect | idle; HOST is loopback only (127.0.0.0/8 or [::1])\n"
        "  --conns C       connections (echo, idle) or concurrent connect cycles (connect) [50]\n"
        "  --size S        message size in bytes [64]\n"
        "  --inflight K    messages in flight per connection (echo) [1]\n"
        "  --duration T    seconds measured (echo, connect) or held (idle) [3]\n"
        "  --messages N    stop after N messages/cycles (echo, connect); no warm-up by default\n"
        "  --warmup W      seconds before the measurement window [0.5]\n"
        "  --timeout H     hard wall-clock bound in seconds [derived: warm-up + T + 15]\n"
        "  --server-pid P  report the server's CPU (/proc/P/stat) over the window, and its RSS\n"
        "  --max-pending M connects in flight while opening connections [128]\n"
        "  --seed X        payload seed\n"
        "prints one line: RESULT mode=... msgs=... msgs_per_s=... p99_us=... errors=...\n"
        "exit status: 0 if every byte matched and errors=0, 1 otherwise, 2 on bad usage\n",
        stderr);
}

template <typename T>
T parse_number(std::string_view flag, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    T value{};
    if constexpr (std::is_floating_point_v<T>) {
        value = static_cast<T>(std::strtod(text.c_str(), &end));
    } else {
        long long v = std::strtoll(text.c_str(), &end, 0);
        if (v < 0) die(std::string(flag) + ": negative value " + text);
        value = static_cast<T>(v);
    }
    if (errno != 0 || end == text.c_str() || *end != '\0')
        die(std::string(flag) + ": not a number: " + text);
    return value;
}

void parse_address(options& o, const std::string& text) {
    std::string host;
    std::string port;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
            die("bad address " + text + " (want [v6]:port)");
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string::npos) die("bad address " + text + " (want host:port)");
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    auto p = parse_number<unsigned>("--addr port", port);
    if (p == 0 || p > 65535) die("bad port in " + text);
    o.addr = {};
    if (auto* v4 = reinterpret_cast<sockaddr_in*>(&o.addr);
        inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        // Loopback only: this tool generates load, and load goes to this machine alone.
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127) die("refusing non-loopback address " + host);
        v4->sin_family = AF_INET;
        v4->sin_port = htons(static_cast<std::uint16_t>(p));
        o.addr_len = sizeof(sockaddr_in);
    } else if (auto* v6 = reinterpret_cast<sockaddr_in6*>(&o.addr);
               inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) die("refusing non-loopback address " + host);
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(static_cast<std::uint16_t>(p));
        o.addr_len = sizeof(sockaddr_in6);
    } else {
        die("bad host " + host + " (want an IP literal: 127.0.0.1 or ::1)");
    }
    o.addr_text = text;
}

options parse_options(int argc, char** argv) {
    if (argc < 2) {
        usage();
        std::exit(2);
    }
    options o;
    o.mode = argv[1];
    if (o.mode == "-h" || o.mode == "--help") {
        usage();
        std::exit(0);
    }
    if (o.mode != "echo" && o.mode != "connect" && o.mode != "idle") {
        usage();
        die("unknown mode " + o.mode);
    }
    for (int i = 2; i < argc; ++i) {
        std::string flag = argv[i];
        std::string value;
        if (auto eq = flag.find('='); eq != std::string::npos) {
            value = flag.substr(eq + 1);
            flag.resize(eq);
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            die(flag + " needs a value");
        }
        if (flag == "--addr") {
            parse_address(o, value);
        } else if (flag == "--conns") {
            o.conns = parse_number<int>(flag, value);
        } else if (flag == "--size") {
            o.size = parse_number<std::size_t>(flag, value);
        } else if (flag == "--inflight") {
            o.inflight = parse_number<int>(flag, value);
        } else if (flag == "--duration") {
            o.duration = parse_number<double>(flag, value);
            o.duration_set = true;
        } else if (flag == "--messages") {
            o.messages = parse_number<u64>(flag, value);
        } else if (flag == "--warmup") {
            o.warmup = parse_number<double>(flag, value);
            o.warmup_set = true;
        } else if (flag == "--timeout") {
            o.timeout = parse_number<double>(flag, value);
        } else if (flag == "--server-pid") {
            o.server_pid = parse_number<int>(flag, value);
        } else if (flag == "--max-pending") {
            o.max_pending = parse_number<int>(flag, value);
        } else if (flag == "--seed") {
            o.seed = parse_number<u64>(flag, value);
        } else {
            usage();
            die("unknown option " + flag);
        }
    }
    if (o.addr_len == 0) die("--addr HOST:PORT is required");
    if (o.conns < 1) die("--conns must be at least 1");
    if (o.size < 1 || o.size > (64u << 20)) die("--size must be 1 byte to 64 MiB");
    if (o.inflight < 1 || o.inflight > 4096) die("--inflight must be 1 to 4096");
    if (o.max_pending < 1) die("--max-pending must be at least 1");
    if (o.duration < 0 || o.warmup < 0 || o.timeout < 0) die("times must not be negative");
    // With a message count, the run is "N messages, then stop": no warm-up unless asked, and the
    // duration only bounds it when given.
    if (o.messages > 0 && !o.warmup_set) o.warmup = 0;
    if (o.messages > 0 && !o.duration_set) o.duration = 0;
    if (o.mode == "idle") o.warmup = 0;
    if (o.timeout == 0) o.timeout = o.warmup + (o.duration > 0 ? o.duration : 60) + 15;
    return o;
}

// ---- measurement helpers -----------------------------------------------------------------------

// Log-linear histogram of nanoseconds: exact below 128 ns, then 128 buckets per power of two
// (under 1 % error), bounded memory whatever the run length.
class histogram {
public:
    void add(i64 ns) {
        u64 v = ns < 0 ? 0 : static_cast<u64>(ns);
        ++counts_[index(v)];
        ++total_;
        max_ = std::max(max_, v);
    }
    [[nodiscard]] u64 total() const { return total_; }
    [[nodiscard]] double max_us() const { return static_cast<double>(max_) / 1e3; }

    // The value at quantile q, in microseconds (the middle of its bucket).
    [[nodiscard]] double quantile_us(double q) const {
        if (total_ == 0) return 0;
        u64 rank = static_cast<u64>(std::ceil(q * static_cast<double>(total_)));
        rank = std::clamp<u64>(rank, 1, total_);
        u64 seen = 0;
        for (std::size_t i = 0; i < counts_.size(); ++i) {
            seen += counts_[i];
            if (seen >= rank) {
                double mid = static_cast<double>(lower(i) + lower(i + 1) - 1) / 2.0;
                return std::min(mid, static_cast<double>(max_)) / 1e3;
            }
        }
        return static_cast<double>(max_) / 1e3;
    }

private:
    static constexpr int sub_bits = 7;
    static constexpr u64 sub_count = u64{1} << sub_bits;

    static std::size_t index(u64 v) {
        if (v < sub_count) return static_cast<std::size_t>(v);
        int e = 63 - __builtin_clzll(v);
        u64 mantissa = (v >> (e - sub_bits)) & (sub_count - 1);
        return static_cast<std::size_t>((static_cast<u64>(e - sub_bits + 1) << sub_bits) +
                                        mantissa);
    }
    static u64 lower(std::size_t i) {
        if (i < sub_count) return i;
        int e = static_cast<int>(i >> sub_bits) + sub_bits - 1;
        u64 mantissa = i & (sub_count - 1);
        return (sub_count | mantissa) << (e - sub_bits);
    }

    std::vector<u64> counts_ = std::vector<u64>((64 - sub_bits + 1) << sub_bits, 0);
    u64 total_ = 0;
    u64 max_ = 0;
};

// utime + stime of a process (all its threads), in microseconds; nullopt if it is gone.
std::optional<double> process_cpu_us(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!in || !std::getline(in, line)) return std::nullopt;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    auto close = line.rfind(')');
    if (close == std::string::npos) return std::nullopt;
    std::istringstream fields(line.substr(close + 2));
    std::string field;
    u64 utime = 0;
    u64 stime = 0;
    for (int n = 3; fields >> field; ++n) {
        if (n == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
        if (n == 15) {
            stime = std::strtoull(field.c_str(), nullptr, 10);
            break;
        }
    }
    static const double tick_us = 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
    return static_cast<double>(utime + stime) * tick_us;
}

// Time on CPU of all the threads of a process (/proc/PID/task/*/schedstat, nanoseconds), in
// microseconds: the same quantity as utime+stime without the 10 ms tick granularity.
std::optional<double> process_sched_us(int pid) {
    std::error_code ec;
    std::filesystem::directory_iterator tasks("/proc/" + std::to_string(pid) + "/task", ec);
    if (ec) return std::nullopt;
    double total_ns = 0;
    for (const auto& task : tasks) {
        std::ifstream in(task.path() / "schedstat");
        double ns = 0;
        if (in >> ns) total_ns += ns;
    }
    return total_ns / 1e3;
}

// VmRSS of a process in KiB; nullopt if it is gone.
std::optional<long> process_rss_kib(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    }
    return std::nullopt;
}

// Busy and total jiffies of the whole machine (/proc/stat), and the steal the hypervisor reports:
// how much else ran during a window.
struct machine_cpu {
    double busy = 0;
    double total = 0;
    double steal = 0;
};

std::optional<machine_cpu> read_machine_cpu() {
    std::ifstream in("/proc/stat");
    std::string cpu;
    double v[10] = {};
    if (!(in >> cpu) || cpu != "cpu") return std::nullopt;
    for (double& x : v) in >> x;
    machine_cpu m;
    for (double x : v) m.total += x;
    m.total -= v[8] + v[9];  // guest time is already counted in user time
    m.busy = m.total - v[3] - v[4];
    m.steal = v[7];
    return m;
}

// CPU time of this process, microseconds.
double own_cpu_us() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void raise_fd_limit() {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
}

long fd_limit() {
    rlimit lim{};
    getrlimit(RLIMIT_NOFILE, &lim);
    return static_cast<long>(lim.rlim_cur);
}

// ---- payload -----------------------------------------------------------------------------------

// The bytes of every connection's stream come from one pseudo-random pattern of prime length,
// each connection starting at its own offset. `extra` bytes repeat the start, so any run of up to
// `extra` bytes from an offset below `period` is contiguous: sends need no copy, checks one
// memcmp.
class pattern {
public:
    static constexpr std::size_t period = 1'048'573;  // prime: no message size divides it
    static constexpr std::size_t extra = 65'536;

    explicit pattern(u64 seed) : bytes_(period + extra) {
        u64 x = seed | 1;
        for (std::size_t i = 0; i < period; ++i) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes_[i] = static_cast<unsigned char>(x >> 24);
        }
        std::copy_n(bytes_.begin(), extra, bytes_.begin() + period);
    }
    [[nodiscard]] const unsigned char* at(u64 offset) const {
        return bytes_.data() + offset % period;
    }
    [[nodiscard]] static u64 start_of(u64 conn_id) { return (conn_id * 7'919 * 131) % period; }

    // True if `data` is what the stream holds from `offset` on.
    [[nodiscard]] bool matches(u64 offset, const unsigned char* data, std::size_t n) const {
        while (n > 0) {
            std::size_t chunk = std::min(n, extra);
            if (std::memcmp(data, at(offset), chunk) != 0) return false;
            data += chunk;
            offset += chunk;
            n -= chunk;
        }
        return true;
    }

private:
    std::vector<unsigned char> bytes_;
};

// ---- the run -----------------------------------------------------------------------------------

volatile sig_atomic_t interrupted = 0;

void on_interrupt(int) { interrupted = 1; }

void on_alarm(int) {
    static const char msg[] = "load: hard time bound exceeded, aborting\n";
    [[maybe_unused]] auto n = write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(3);
}

struct conn_state {
    int fd = -1;
    u64 id = 0;
    u64 start = 0;     // this connection's offset in the pattern
    u64 queued = 0;    // bytes we mean to send
    u64 sent = 0;      // bytes written
    u64 received = 0;  // bytes received (and checked)
    u64 msgs_queued = 0;
    u64 msgs_done = 0;
    bool want_out = false;
    bool open = false;
    bool ready = false;  // its first (probe) message came back
};

struct counters {
    u64 errors = 0;
    u64 mismatches = 0;
    u64 window_msgs = 0;
    u64 window_bytes = 0;
    u64 total_msgs = 0;
    std::string first_error;
};

class runner {
public:
    explicit runner(const options& o) : o_(o), pattern_(o.seed), rbuf_(256 * 1024) {
        epfd_ = epoll_create1(EPOLL_CLOEXEC);
        if (epfd_ < 0) die(std::string("epoll_create1: ") + std::strerror(errno));
        t_begin_ = now_ns();
        hard_deadline_ = t_begin_ + seconds_to_ns(o.timeout);
    }
    ~runner() {
        for (auto& c : conns_) close_conn(c);
        close(epfd_);
    }
    runner(const runner&) = delete;
    runner& operator=(const runner&) = delete;

    int run() {
        if (o_.mode == "echo") return run_echo();
        if (o_.mode == "connect") return run_connect();
        return run_idle();
    }

private:
    // -- shared plumbing

    void error(const std::string& what) {
        if (count_.errors == 0) count_.first_error = what;
        ++count_.errors;
    }

    [[nodiscard]] bool out_of_time() const {
        return interrupted != 0 || now_ns() >= hard_deadline_;
    }

    int new_socket() {
        int fd = socket(o_.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) error(std::string("socket: ") + std::strerror(errno));
        return fd;
    }

    void set_interest(conn_state& c, std::uint32_t events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = c.id;
        if (epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev) != 0)
            error(std::string("epoll_ctl: ") + std::strerror(errno));
    }

    void close_conn(conn_state& c) {
        if (c.fd >= 0) close(c.fd);
        c.fd = -1;
        c.open = false;
    }

    // Opens o_.conns connections, each proven by one echoed message (so the server has
    // accepted and served it), with at most max_pending connections between connect() and their
    // first echo: a burst larger than the server's accept backlog would only measure SYN
    // retransmits. Ends with level-triggered EPOLLIN registered on each.
    bool open_connections() {
        conns_.resize(static_cast<std::size_t>(o_.conns));
        sent_at_.assign(conns_.size() * static_cast<std::size_t>(o_.inflight), 0);
        sending_ = false;  // no refills: exactly one probe message per connection
        std::size_t next = 0;
        std::size_t pending = 0;
        std::size_t ready = 0;
        std::vector<epoll_event> events(1024);
        while (ready < conns_.size()) {
            while (next < conns_.size() && pending < static_cast<std::size_t>(o_.max_pending)) {
                auto& c = conns_[next];
                c.id = next;
                c.start = pattern::start_of(next);
                ++next;
                c.fd = new_socket();
                if (c.fd < 0) return false;
                int one = 1;
                setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                if (connect(c.fd, reinterpret_cast<const sockaddr*>(&o_.addr), o_.addr_len) != 0 &&
                    errno != EINPROGRESS) {
                    error(std::string("connect: ") + std::strerror(errno));
                    return false;
                }
                epoll_event ev{};
                ev.events = EPOLLOUT;
                ev.data.u64 = c.id;
                if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
                    error(std::string("epoll_ctl: ") + std::strerror(errno));
                    return false;
                }
                ++pending;
            }
            if (out_of_time() || count_.errors > 0) {
                if (count_.errors == 0)
                    error("timed out opening connections (" + std::to_string(ready) + " of " +
                          std::to_string(conns_.size()) + " ready)");
                return false;
            }
            int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), 10);
            if (n < 0 && errno != EINTR) die(std::string("epoll_wait: ") + std::strerror(errno));
            for (int i = 0; i < n; ++i) {
                const auto& ev = events[static_cast<std::size_t>(i)];
                auto& c = conns_[ev.data.u64];
                if (!c.open) {
                    int err = 0;
                    socklen_t len = sizeof err;
                    getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                    if (err != 0) {
                        error(std::string("connect: ") + std::strerror(err));
                        return false;
                    }
                    c.open = true;
                    set_interest(c, EPOLLIN);
                    queue_one(c, now_ns());
                    flush(c);
                    continue;
                }
                on_echo_event(c, ev.events);
                if (c.open && !c.ready && c.msgs_done == 1) {
                    c.ready = true;
                    --pending;
                    ++ready;
                }
            }
        }
        return true;
    }

    // Writes what is queued; waits for EPOLLOUT when the socket buffer is full.
    bool flush(conn_state& c) {
        while (c.sent < c.queued) {
            std::size_t n =
                static_cast<std::size_t>(std::min<u64>(c.queued - c.sent, pattern::extra));
            ssize_t w = send(c.fd, pattern_.at(c.start + c.sent), n, MSG_NOSIGNAL);
            if (w > 0) {
                c.sent += static_cast<u64>(w);
                continue;
            }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (!c.want_out) {
                    c.want_out = true;
                    set_interest(c, EPOLLIN | EPOLLOUT);
                }
                return true;
            }
            error(std::string("send: ") + std::strerror(errno));
            close_conn(c);
            return false;
        }
        if (c.want_out) {
            c.want_out = false;
            set_interest(c, EPOLLIN);
        }
        return true;
    }

    // Reads once, checks the bytes; returns how many arrived, or -1 after an error or EOF.
    ssize_t receive(conn_state& c) {
        ssize_t r = recv(c.fd, rbuf_.data(), rbuf_.size(), 0);
        if (r > 0) {
            auto n = static_cast<u64>(r);
            if (c.received + n > c.sent) {
                ++count_.mismatches;
                error("server sent " + std::to_string(c.received + n - c.sent) +
                      " bytes that were never sent to it");
                close_conn(c);
                return -1;
            }
            if (!pattern_.matches(c.start + c.received, rbuf_.data(),
                                  static_cast<std::size_t>(r))) {
                ++count_.mismatches;
                error("echoed bytes differ from the bytes sent, connection " +
                      std::to_string(c.id) + " near stream offset " + std::to_string(c.received));
                close_conn(c);
                return -1;
            }
            c.received += n;
            return r;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
        error(r == 0 ? "server closed connection " + std::to_string(c.id) +
                           " with messages outstanding"
                     : std::string("recv: ") + std::strerror(errno));
        close_conn(c);
        return -1;
    }

    // -- echo

    void queue_one(conn_state& c, i64 now) {
        auto k = static_cast<u64>(o_.inflight);
        sent_at_[c.id * k + c.msgs_queued % k] = now;
        ++c.msgs_queued;
        ++total_queued_;
        c.queued += o_.size;
    }

    void queue_messages(conn_state& c, i64 now) {
        auto k = static_cast<u64>(o_.inflight);
        while (c.msgs_queued - c.msgs_done < k && sending_) {
            if (o_.messages > 0 && total_queued_ >= o_.messages) {
                sending_ = false;
                break;
            }
            queue_one(c, now);
        }
    }

    void on_echo_event(conn_state& c, std::uint32_t events) {
        if (!c.open) return;
        if (events & EPOLLOUT) {
            if (!flush(c)) return;
        }
        if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
        if (receive(c) <= 0) return;
        i64 now = now_ns();
        auto k = static_cast<u64>(o_.inflight);
        while (c.msgs_done < c.msgs_queued && c.received >= (c.msgs_done + 1) * o_.size) {
            i64 latency = now - sent_at_[c.id * k + c.msgs_done % k];
            ++c.msgs_done;
            ++count_.total_msgs;
            if (measuring_) {
                hist_.add(latency);
                ++count_.window_msgs;
            }
        }
        queue_messages(c, now);
        flush(c);
    }

    [[nodiscard]] u64 outstanding() const {
        u64 n = 0;
        for (const auto& c : conns_)
            if (c.open) n += c.msgs_queued - c.msgs_done;
        return n;
    }

    void begin_window(i64 now) {
        measuring_ = true;
        t_window_begin_ = now;
        machine_begin_ = read_machine_cpu();
        own_begin_ = own_cpu_us();
        if (o_.server_pid) {
            cpu_begin_ = process_cpu_us(o_.server_pid);
            sched_begin_ = process_sched_us(o_.server_pid);
        }
    }

    void end_window(i64 now) {
        measuring_ = false;
        t_window_end_ = now;
        machine_end_ = read_machine_cpu();
        own_end_ = own_cpu_us();
        if (o_.server_pid) {
            cpu_end_ = process_cpu_us(o_.server_pid);
            sched_end_ = process_sched_us(o_.server_pid);
        }
    }

    int run_echo() {
        if (o_.conns > fd_limit() - 16) die("--conns is over the open-file limit");
        if (!open_connections()) return report();
        sending_ = true;
        i64 t0 = now_ns();
        i64 window_begin = t0 + seconds_to_ns(o_.warmup);
        i64 window_end = o_.duration > 0 ? window_begin + seconds_to_ns(o_.duration) : 0;
        if (o_.warmup == 0) begin_window(t0);
        for (auto& c : conns_) {
            queue_messages(c, now_ns());
            flush(c);
        }
        std::vector<epoll_event> events(1024);
        i64 drain_deadline = 0;
        for (;;) {
            i64 now = now_ns();
            if (!measuring_ && t_window_end_ == 0 && now >= window_begin) begin_window(now);
            bool done_by_count = o_.messages > 0 && count_.total_msgs >= o_.messages;
            if (measuring_ && ((window_end && now >= window_end) || done_by_count)) end_window(now);
            if (t_window_end_ != 0) {
                sending_ = false;
                if (drain_deadline == 0) drain_deadline = now + seconds_to_ns(5);
                if (outstanding() == 0) break;
                if (now >= drain_deadline) {
                    error(std::to_string(outstanding()) + " messages never came back");
                    break;
                }
            }
            if (out_of_time()) {
                error(interrupted ? "interrupted" : "hard time bound reached");
                if (measuring_) end_window(now);
                break;
            }
            int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), 5);
            if (n < 0 && errno != EINTR) die(std::string("epoll_wait: ") + std::strerror(errno));
            for (int i = 0; i < n; ++i) {
                const auto& ev = events[static_cast<std::size_t>(i)];
                on_echo_event(conns_[ev.data.u64], ev.events);
            }
            if (count_.errors > 0) {  // the run has failed: say so now, not at the time bound
                if (measuring_) end_window(now_ns());
                break;
            }
        }
        count_.window_bytes = count_.window_msgs * o_.size;
        return report();
    }

    // -- connect: connect, one echo, close; c.id carries a generation so stale events are ignored

    int run_connect() {
        struct slot {
            int fd = -1;
            u64 generation = 0;
            i64 started = 0;
            u64 received = 0;
            u64 start = 0;
            bool wrote = false;
        };
        std::vector<slot> slots(static_cast<std::size_t>(o_.conns));
        u64 cycles_started = 0;
        bool starting = true;
        auto key = [](std::size_t index, u64 generation) {
            return (generation << 24) | static_cast<u64>(index);
        };
        auto stop_slot = [&](slot& s) {
            if (s.fd >= 0) close(s.fd);
            s.fd = -1;
        };
        auto start_slot = [&](std::size_t index) {
            auto& s = slots[index];
            if (!starting || (o_.messages > 0 && cycles_started >= o_.messages)) return;
            s.fd = new_socket();
            if (s.fd < 0) return;
            ++s.generation;
            s.started = now_ns();
            s.received = 0;
            s.wrote = false;
            s.start = pattern::start_of(cycles_started);
            ++cycles_started;
            if (connect(s.fd, reinterpret_cast<const sockaddr*>(&o_.addr), o_.addr_len) != 0 &&
                errno != EINPROGRESS) {
                error(std::string("connect: ") + std::strerror(errno));
                stop_slot(s);
                return;
            }
            // Edge-triggered: one EPOLLOUT edge when connected, EPOLLIN edges as echoes arrive,
            // no epoll_ctl beyond the ADD.
            epoll_event ev{};
            ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
            ev.data.u64 = key(index, s.generation);
            if (epoll_ctl(epfd_, EPOLL_CTL_ADD, s.fd, &ev) != 0) {
                error(std::string("epoll_ctl: ") + std::strerror(errno));
                stop_slot(s);
            }
        };
        auto on_event = [&](std::size_t index, std::uint32_t events) {
            auto& s = slots[index];
            if (!s.wrote) {
                if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
                ssize_t w = send(s.fd, pattern_.at(s.start), o_.size, MSG_NOSIGNAL);
                if (w != static_cast<ssize_t>(o_.size)) {
                    error(w < 0 ? std::string("connect/send: ") + std::strerror(errno)
                                : std::string("short send in connect mode"));
                    stop_slot(s);
                    start_slot(index);
                    return;
                }
                s.wrote = true;
            }
            if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
            for (;;) {
                ssize_t r = recv(s.fd, rbuf_.data(), rbuf_.size(), 0);
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0 || s.received + static_cast<u64>(r) > o_.size) {
                    error(r == 0  ? std::string("server closed before echoing")
                          : r < 0 ? std::string("recv: ") + std::strerror(errno)
                                  : std::string("server sent more than it was sent"));
                    if (r > 0) ++count_.mismatches;
                    stop_slot(s);
                    start_slot(index);
                    return;
                }
                if (!pattern_.matches(s.start + s.received, rbuf_.data(),
                                      static_cast<std::size_t>(r))) {
                    ++count_.mismatches;
                    error("echoed bytes differ from the bytes sent (connect mode)");
                    stop_slot(s);
                    start_slot(index);
                    return;
                }
                s.received += static_cast<u64>(r);
                if (s.received == o_.size) {
                    i64 now = now_ns();
                    ++count_.total_msgs;
                    if (measuring_) {
                        hist_.add(now - s.started);
                        ++count_.window_msgs;
                    }
                    stop_slot(s);
                    start_slot(index);
                    return;
                }
            }
        };

        i64 t0 = now_ns();
        i64 window_begin = t0 + seconds_to_ns(o_.warmup);
        i64 window_end = o_.duration > 0 ? window_begin + seconds_to_ns(o_.duration) : 0;
        if (o_.warmup == 0) begin_window(t0);
        for (std::size_t i = 0; i < slots.size(); ++i) start_slot(i);
        std::vector<epoll_event> events(1024);
        i64 drain_deadline = 0;
        for (;;) {
            i64 now = now_ns();
            if (!measuring_ && t_window_end_ == 0 && now >= window_begin) begin_window(now);
            bool done_by_count = o_.messages > 0 && count_.total_msgs >= o_.messages;
            if (measuring_ && ((window_end && now >= window_end) || done_by_count)) end_window(now);
            bool any_open =
                std::any_of(slots.begin(), slots.end(), [](const slot& s) { return s.fd >= 0; });
            if (t_window_end_ != 0) {
                starting = false;
                if (drain_deadline == 0) drain_deadline = now + seconds_to_ns(5);
                if (!any_open) break;
                if (now >= drain_deadline) {
                    error("connect cycles still pending after the window");
                    break;
                }
            }
            if (!any_open && starting) {
                error("no connect cycle could be started");
                if (measuring_) end_window(now);
                break;
            }
            if (out_of_time()) {
                error(interrupted ? "interrupted" : "hard time bound reached");
                if (measuring_) end_window(now);
                break;
            }
            if (count_.errors > 100) {
                if (measuring_) end_window(now);
                break;
            }
            int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), 5);
            if (n < 0 && errno != EINTR) die(std::string("epoll_wait: ") + std::strerror(errno));
            for (int i = 0; i < n; ++i) {
                const auto& ev = events[static_cast<std::size_t>(i)];
                std::size_t index = ev.data.u64 & 0xffffff;
                if (slots[index].fd < 0 || slots[index].generation != (ev.data.u64 >> 24)) continue;
                on_event(index, ev.events);
            }
        }
        for (auto& s : slots) stop_slot(s);
        count_.window_bytes = count_.window_msgs * o_.size;
        return report();
    }

    // -- idle: open, one echo each (so the server has accepted and served every connection),
    // then hold them and read the server's RSS

    int run_idle() {
        if (o_.conns > fd_limit() - 16)
            die("--conns " + std::to_string(o_.conns) + " is over the open-file limit " +
                std::to_string(fd_limit()));
        if (o_.server_pid) rss_before_ = process_rss_kib(o_.server_pid);
        i64 t_open = now_ns();
        bool opened = open_connections();
        open_seconds_ = static_cast<double>(now_ns() - t_open) / 1e9;
        if (!opened) return report();
        // Hold: an idle connection must stay silent and open.
        std::vector<epoll_event> events(1024);
        begin_window(now_ns());
        i64 hold_end = now_ns() + seconds_to_ns(o_.duration);
        while (now_ns() < hold_end && !out_of_time() && count_.errors == 0) {
            int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), 20);
            if (n < 0 && errno != EINTR) die(std::string("epoll_wait: ") + std::strerror(errno));
            for (int i = 0; i < n; ++i) {
                auto& c = conns_[events[static_cast<std::size_t>(i)].data.u64];
                if (c.open && receive(c) > 0) error("server sent bytes on an idle connection");
            }
        }
        if (o_.server_pid) rss_after_ = process_rss_kib(o_.server_pid);
        end_window(now_ns());
        if (out_of_time() && count_.errors == 0)
            error(interrupted ? "interrupted" : "hard time bound reached");
        return report();
    }

    // -- result

    int report() {
        bool ok = count_.errors == 0 && count_.mismatches == 0;
        double seconds = t_window_end_ > t_window_begin_
                             ? static_cast<double>(t_window_end_ - t_window_begin_) / 1e9
                             : 0.0;
        double rate = seconds > 0 ? static_cast<double>(count_.window_msgs) / seconds : 0;
        double mb = seconds > 0 ? static_cast<double>(count_.window_bytes) / seconds / 1e6 : 0;
        std::string line = "RESULT mode=" + o_.mode;
        char buf[160];
        auto add = [&](const char* fmt, auto... v) {
            std::snprintf(buf, sizeof buf, fmt, v...);
            line += ' ';
            line += buf;
        };
        add("conns=%d", o_.conns);
        add("size=%zu", o_.size);
        if (o_.mode == "echo") add("inflight=%d", o_.inflight);
        if (o_.mode != "idle") {
            add("seconds=%.3f", seconds);
            add("msgs=%" PRIu64, count_.window_msgs);
            add("msgs_per_s=%.0f", rate);
            add("mb_per_s=%.2f", mb);
            add("p50_us=%.1f", hist_.quantile_us(0.50));
            add("p90_us=%.1f", hist_.quantile_us(0.90));
            add("p99_us=%.1f", hist_.quantile_us(0.99));
            add("p999_us=%.1f", hist_.quantile_us(0.999));
            add("max_us=%.1f", hist_.max_us());
        } else {
            add("held_s=%.3f", seconds);
            add("open_s=%.3f", open_seconds_);
        }
        std::optional<double> cpu_us;
        if (cpu_begin_ && cpu_end_) cpu_us = *cpu_end_ - *cpu_begin_;
        if (cpu_us) {
            add("server_cpu_us=%.0f", *cpu_us);
            if (o_.mode != "idle") {
                add("server_cpu_us_per_msg=%.3f",
                    count_.window_msgs ? *cpu_us / static_cast<double>(count_.window_msgs) : 0.0);
                add("server_cpu_util=%.3f", seconds > 0 ? *cpu_us / 1e6 / seconds : 0.0);
            }
        }
        if (sched_begin_ && sched_end_ && o_.mode != "idle") {
            double sched_us = *sched_end_ - *sched_begin_;
            add("server_sched_us=%.0f", sched_us);
            add("server_sched_us_per_msg=%.3f",
                count_.window_msgs ? sched_us / static_cast<double>(count_.window_msgs) : 0.0);
        }
        // How busy the machine was, in CPUs: this process, the server and everything else.
        if (machine_begin_ && machine_end_ && seconds > 0 && o_.mode != "idle") {
            double total = machine_end_->total - machine_begin_->total;
            double cpus = static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN));
            if (total > 0) {
                double busy = (machine_end_->busy - machine_begin_->busy) / total * cpus;
                double own = (own_end_ - own_begin_) / 1e6 / seconds;
                double server = 0;
                if (sched_begin_ && sched_end_)
                    server = (*sched_end_ - *sched_begin_) / 1e6 / seconds;
                add("load_cpu_util=%.3f", own);
                add("machine_busy_cpus=%.3f", busy);
                add("other_cpus=%.3f", std::max(0.0, busy - own - server));
                add("steal_cpus=%.3f",
                    (machine_end_->steal - machine_begin_->steal) / total * cpus);
            }
        }
        std::optional<double> rss_per_conn;
        if (rss_before_ && rss_after_) {
            rss_per_conn = static_cast<double>(*rss_after_ - *rss_before_) * 1024.0 / o_.conns;
            add("server_rss_kib_before=%ld", *rss_before_);
            add("server_rss_kib_after=%ld", *rss_after_);
            add("rss_per_conn_b=%.0f", *rss_per_conn);
        }
        add("mismatches=%" PRIu64, count_.mismatches);
        add("errors=%" PRIu64, count_.errors);
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);

        if (o_.mode == "idle") {
            std::fprintf(stderr, "load idle: %d connections opened in %.2f s, held %.2f s",
                         o_.conns, open_seconds_, seconds);
            if (rss_per_conn) std::fprintf(stderr, ", server RSS +%.0f B/conn", *rss_per_conn);
        } else {
            std::fprintf(
                stderr,
                "load %s: %d conns x %zu B%s: %.0f %s/s, %.2f MB/s, p50 %.1f us, p99 "
                "%.1f us, p99.9 %.1f us",
                o_.mode.c_str(), o_.conns, o_.size,
                o_.mode == "echo" ? (", inflight " + std::to_string(o_.inflight)).c_str() : "",
                rate, o_.mode == "connect" ? "cycles" : "msgs", mb, hist_.quantile_us(0.5),
                hist_.quantile_us(0.99), hist_.quantile_us(0.999));
            if (cpu_us && count_.window_msgs)
                std::fprintf(stderr, ", server %.2f us CPU/msg",
                             *cpu_us / static_cast<double>(count_.window_msgs));
        }
        std::fprintf(stderr, "; %" PRIu64 " errors, %" PRIu64 " mismatches%s%s\n", count_.errors,
                     count_.mismatches, count_.errors ? " (first: " : "",
                     count_.errors ? (count_.first_error + ")").c_str() : "");
        return ok ? 0 : 1;
    }

    options o_;
    pattern pattern_;
    std::vector<unsigned char> rbuf_;
    int epfd_ = -1;
    std::vector<conn_state> conns_;
    std::vector<i64> sent_at_;  // conns x inflight ring of send times
    histogram hist_;
    counters count_;
    i64 t_begin_ = 0;
    i64 hard_deadline_ = 0;
    i64 t_window_begin_ = 0;
    i64 t_window_end_ = 0;
    bool measuring_ = false;
    bool sending_ = false;
    u64 total_queued_ = 0;
    double open_seconds_ = 0;
    std::optional<double> cpu_begin_;
    std::optional<double> cpu_end_;
    std::optional<machine_cpu> machine_begin_;
    std::optional<machine_cpu> machine_end_;
    double own_begin_ = 0;
    double own_end_ = 0;
    std::optional<double> sched_begin_;
    std::optional<double> sched_end_;
    std::optional<long> rss_before_;
    std::optional<long> rss_after_;
};

}  // namespace

int main(int argc, char** argv) {
    options o = parse_options(argc, argv);
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    signal(SIGALRM, on_alarm);
    // The loop checks the bound itself; alarm() is the backstop if it ever cannot.
    alarm(static_cast<unsigned>(std::ceil(o.timeout)) + 5);
    runner r(o);
    return r.run();
}
