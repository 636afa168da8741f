// SPDX-License-Identifier: MIT
// Allocations: none per message on the data path, none between fork() and exec(); counted by
// replacing operator new/delete and (without a sanitizer) interposing malloc and friends.
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <mutex>
#include <netinet/in.h>
#include <new>
#include <optional>
#include <pthread.h>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/time.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"

// Sanitizers bring their own malloc: interposing it too would mix two allocators, so under one
// malloc is counted through the sanitizer's allocator hook instead (and the fork() test has
// nothing to observe).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NETLOOP_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NETLOOP_TEST_SANITIZED 1
#endif
#endif
#if defined(NETLOOP_TEST_SANITIZED)
#define NETLOOP_TEST_COUNT_MALLOC 0
#endif
#if !defined(NETLOOP_TEST_COUNT_MALLOC) && defined(__GLIBC__)
#define NETLOOP_TEST_COUNT_MALLOC 1
#endif
#if !defined(NETLOOP_TEST_COUNT_MALLOC)
#define NETLOOP_TEST_COUNT_MALLOC 0
#endif

namespace {

// Counting is on only on the thread that set it (the loop's, during a measured window).
constinit thread_local bool counting = false;
std::atomic<std::uint64_t> news{0};
std::atomic<std::uint64_t> mallocs{0};

void count_new() noexcept {
    if (counting) news.fetch_add(1, std::memory_order_relaxed);
}

void* checked(void* p) {
    if (p == nullptr) throw std::bad_alloc();
    return p;
}

void* aligned(std::size_t n, std::align_val_t a) noexcept {
    auto align = std::max(static_cast<std::size_t>(a), sizeof(void*));
    void* p = nullptr;
    return ::posix_memalign(&p, align, n == 0 ? 1 : n) == 0 ? p : nullptr;
}

}  // namespace

// All the replaceable forms, so that every allocation by operator new is seen.
void* operator new(std::size_t n) {
    count_new();
    return checked(std::malloc(n == 0 ? 1 : n));
}
void* operator new[](std::size_t n) {
    count_new();
    return checked(std::malloc(n == 0 ? 1 : n));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    count_new();
    return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    count_new();
    return std::malloc(n == 0 ? 1 : n);
}
void* operator new(std::size_t n, std::align_val_t a) {
    count_new();
    return checked(aligned(n, a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
    count_new();
    return checked(aligned(n, a));
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    count_new();
    return aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    count_new();
    return aligned(n, a);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

#if NETLOOP_TEST_COUNT_MALLOC
// glibc's own entry points; the definitions below interpose the public names for the whole
// process (the executable's symbols come first).
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {

// Set in the child of every fork() (pthread_atfork): a malloc there appends a line to
// `fork_marker` with only async-signal-safe calls.
volatile bool in_forked_child = false;
char fork_marker[512] = {};

void note_malloc() noexcept {
    if (counting) mallocs.fetch_add(1, std::memory_order_relaxed);
    if (in_forked_child && fork_marker[0] != '\0') {
        int fd = ::open(fork_marker, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            (void)!::write(fd, "malloc\n", 7);
            ::close(fd);
        }
    }
}

}  // namespace

extern "C" {
void* malloc(std::size_t n) noexcept {
    note_malloc();
    return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) noexcept {
    note_malloc();
    return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) noexcept {
    note_malloc();
    return __libc_realloc(p, n);
}
void* memalign(std::size_t align, std::size_t n) noexcept {
    note_malloc();
    return __libc_memalign(align, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) noexcept {
    note_malloc();
    return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) noexcept {
    note_malloc();
    if (align % sizeof(void*) != 0 || (align & (align - 1)) != 0) return EINVAL;
    void* p = __libc_memalign(align, n);
    if (p == nullptr) return ENOMEM;
    *out = p;
    return 0;
}
void free(void* p) noexcept { __libc_free(p); }
}
#endif

#if defined(NETLOOP_TEST_SANITIZED)
// Under a sanitizer its allocator reports every malloc to a hook instead (the runtime of ASan
// and TSan has it; g++ 12 ships no header for it).
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             std::size_t),
                                                         void (*free_hook)(const volatile void*));

namespace {

void on_sanitizer_malloc(const volatile void*, std::size_t) {
    if (counting) mallocs.fetch_add(1, std::memory_order_relaxed);
}
void on_sanitizer_free(const volatile void*) {}

[[maybe_unused]] const int hooks_installed =
    __sanitizer_install_malloc_and_free_hooks(on_sanitizer_malloc, on_sanitizer_free);

}  // namespace
#endif

using namespace std::chrono_literals;
using netloop::address;
using netloop::task;
using netloop::test::run_bounded;

namespace {

constexpr std::size_t message_size = 64;
constexpr int warm_up = 1000;
constexpr int measured = 10000;

// A plain blocking client on its own thread: sends `count` messages of 64 bytes, one at a time,
// each after the previous one's echo came back whole (every call bounded by 10 s).
class lockstep_client {
public:
    lockstep_client(std::uint16_t port, int count)
        : thread_([this, port, count] { run(port, count); }) {}
    ~lockstep_client() { finish(); }
    lockstep_client(const lockstep_client&) = delete;
    lockstep_client& operator=(const lockstep_client&) = delete;
    // Waits for the client to end (each of its calls is bounded) and returns how many of its
    // messages came back whole.
    int finish() {
        if (thread_.joinable()) thread_.join();
        return echoed_;
    }

private:
    void run(std::uint16_t port, int count) {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return;
        timeval limit{.tv_sec = 10, .tv_usec = 0};
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0) {
            std::array<char, message_size> out;
            std::array<char, message_size> in;
            for (int i = 0; i < count; ++i) {
                for (std::size_t j = 0; j < message_size; ++j) {
                    out[j] = static_cast<char>('a' + (i + static_cast<int>(j)) % 26);
                }
                out[message_size - 1] = '\n';
                if (::send(fd, out.data(), out.size(), MSG_NOSIGNAL) !=
                    static_cast<ssize_t>(out.size())) {
                    break;
                }
                std::size_t got = 0;
                while (got < in.size()) {
                    auto n = ::recv(fd, in.data() + got, in.size() - got, 0);
                    if (n <= 0) break;
                    got += static_cast<std::size_t>(n);
                }
                if (got != in.size() || in != out) break;
                echoed_ = i + 1;
            }
        }
        ::close(fd);
    }

    std::atomic<int> echoed_{0};
    std::thread thread_;
};

// Echoes 64-byte messages one way, with 30 s timeouts armed as samples/echo does.
enum class echo_kind { read_span, read_until, read_exactly };

// Echoes `warm` then `measured` messages in one coroutine (a frame per message here would be
// the test's own allocation, not netloop's; and a second frame for the measured phase would
// take a block from Asio's per-thread cache, which the first measured read would then have to
// allocate again); counting is on for the loop's thread during the measured messages.
task<> echo_n(netloop::connection& c, echo_kind kind, int warm, int measured) {
    std::array<std::byte, message_size> buf;
    std::array<char, message_size> line;
    for (int i = 0; i < warm + measured; ++i) {
        if (i == warm) {
            news = 0;
            mallocs = 0;
            counting = true;
        }
        switch (kind) {
            case echo_kind::read_span: {
                std::size_t got = 0;
                while (got < buf.size()) {
                    auto more = co_await c.read(std::span(buf).subspan(got), 30s);
                    co_await c.write(std::span(buf).subspan(got, more), 30s);
                    got += more;
                }
                break;
            }
            case echo_kind::read_until: {
                auto frame = co_await c.read_until("\n", 1024, 30s);
                std::memcpy(line.data(), frame.data(), frame.size());
                line[frame.size()] = '\n';
                co_await c.write(std::string_view(line.data(), frame.size() + 1), 30s);
                break;
            }
            case echo_kind::read_exactly:
                co_await c.read_exactly(buf, 30s);
                co_await c.write(buf, 30s);
                break;
        }
    }
    counting = false;
}

struct counted {
    int echoed = 0;
    std::uint64_t news = 0;
    std::uint64_t mallocs = 0;
};

// One connection from a lockstep client; counts what the loop's thread allocates while it
// echoes `measured` messages after `warm_up` of them.
counted count_allocations(echo_kind kind) {
    counted r;
    std::optional<lockstep_client> client;
    run_bounded(
        [&]() -> task<> {
            auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
            auto conns = s.connections();
            client.emplace(s.local_port(), warm_up + measured);
            auto accepted = co_await conns.next();
            if (!accepted) co_return;
            auto& c = *accepted;
            co_await echo_n(c, kind, warm_up, measured);
            c.close();
            r.news = news;
            r.mallocs = mallocs;
        },
        60s);
    if (client) r.echoed = client->finish();
    return r;
}

}  // namespace

TEST_CASE("echoing 64-byte messages allocates nothing per message in steady state", "[alloc]") {
    auto kind = GENERATE(echo_kind::read_span, echo_kind::read_until, echo_kind::read_exactly);
    const char* names[] = {"read(span) + write(span)", "read_until(\"\\n\") + write",
                           "read_exactly(64) + write"};
    auto path = names[static_cast<int>(kind)];
    CAPTURE(path, NETLOOP_TEST_COUNT_MALLOC);
    auto r = count_allocations(kind);
    CAPTURE(r.news, r.mallocs);
    CHECK(r.echoed == warm_up + measured);
    CHECK(r.news == 0);
    CHECK(r.mallocs == 0);
}

#if NETLOOP_TEST_COUNT_MALLOC
namespace {
void on_fork_child() { in_forked_child = true; }
}  // namespace
#endif

TEST_CASE("start_successor() allocates nothing between fork() and exec()", "[alloc][daemon]") {
    // The child of a threaded process may only make async-signal-safe calls: malloc there can
    // deadlock on a lock another thread held at fork(). Any malloc in the child leaves a line
    // in the marker file.
#if !NETLOOP_TEST_COUNT_MALLOC
    WARN("malloc is not interposed in this build (a sanitizer owns it): nothing to observe");
#else
    static const bool registered = ::pthread_atfork(nullptr, nullptr, on_fork_child) == 0;
    REQUIRE(registered);
    auto marker = std::filesystem::temp_directory_path() /
                  ("netloop-fork-malloc-" + std::to_string(::getpid()));
    std::filesystem::remove(marker);
    auto text = marker.string();
    REQUIRE(text.size() < sizeof fork_marker);
    std::memcpy(fork_marker, text.c_str(), text.size() + 1);
    auto kind = run_bounded([]() -> task<netloop::errc> {
        auto s = netloop::server::listen(address::parse("127.0.0.1:0"));
        try {
            // /bin/true never reports READY=1: start_successor() forks, execs, waits 300 ms
            // and gives up. The fork and the exec are what this test looks at.
            std::vector<std::string> argv{"/bin/true"};
            std::vector<const netloop::server*> servers{&s};
            auto pid = co_await netloop::start_successor(std::move(argv), servers, 300ms);
            (void)pid;
        } catch (const netloop::error& e) {
            co_return e.kind();
        }
        co_return netloop::errc{};
    });
    fork_marker[0] = '\0';
    bool child_allocated = std::filesystem::exists(marker);
    std::filesystem::remove(marker);
    CHECK(kind == netloop::errc::spawn_failed);  // started, then not ready in time
    CHECK_FALSE(child_allocated);
#endif
}
