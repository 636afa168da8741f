// SPDX-License-Identifier: MIT
// Allocation failure after accept costs only that connection: the N-th allocation on the loop
// thread throws std::bad_alloc, for every N until a whole accept-serve-close cycle passes.
#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <future>
#include <netinet/in.h>
#include <new>
#include <optional>
#include <string>
#include <sys/socket.h>
#include <sys/time.h>
#include <thread>
#include <unistd.h>

#include <netloop/netloop.hpp>

#include "support/catch.hpp"
#include "support/log_capture.hpp"

namespace {

// Armed, the N-th allocation made on the server's loop thread fails; the test thread (the
// clients) is never hit.
constinit thread_local bool on_loop_thread = false;
std::atomic<bool> armed{false};
std::atomic<std::uint64_t> fail_at{0};
std::atomic<std::uint64_t> allocations{0};  // on the loop thread while armed

class injected_bad_alloc : public std::bad_alloc {
public:
    [[nodiscard]] const char* what() const noexcept override {
        return "injected allocation failure";
    }
};

bool fail_now() noexcept {
    if (!on_loop_thread || !armed.load(std::memory_order_relaxed)) return false;
    return allocations.fetch_add(1, std::memory_order_relaxed) + 1 ==
           fail_at.load(std::memory_order_relaxed);
}

void* plain(std::size_t n) noexcept { return fail_now() ? nullptr : std::malloc(n == 0 ? 1 : n); }

void* aligned(std::size_t n, std::align_val_t a) noexcept {
    if (fail_now()) return nullptr;
    auto align = std::max(static_cast<std::size_t>(a), sizeof(void*));
    void* p = nullptr;
    return ::posix_memalign(&p, align, n == 0 ? 1 : n) == 0 ? p : nullptr;
}

void* checked(void* p) {
    if (p == nullptr) throw injected_bad_alloc();
    return p;
}

}  // namespace

// Every replaceable form, all on malloc/free, so that ASan sees matching pairs.
void* operator new(std::size_t n) { return checked(plain(n)); }
void* operator new[](std::size_t n) { return checked(plain(n)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return plain(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return plain(n); }
void* operator new(std::size_t n, std::align_val_t a) { return checked(aligned(n, a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return checked(aligned(n, a)); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return aligned(n, a);
}
// Not inlined: g++ would otherwise see free() of what operator new returned, and warn.
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t,
                                         const std::nothrow_t&) noexcept {
    std::free(p);
}

namespace {

using namespace std::chrono_literals;
using netloop::connection;
using netloop::task;

// How the server under test takes its connections.
enum class accept_path {
    serve,       // server::serve()
    next_spawn,  // connections().next() and spawn(), as the README's echo does
};

struct setup {
    accept_path path;
    bool proxy;  // a PROXY v1 listener: each client sends the header first
};

// Reads a line and writes it back, until the peer closes. Its bounds are far above the
// client's (5 s), so a connection left hanging is seen as such, not ended by these.
task<> echo_lines(connection c) {
    for (;;) {
        auto line = co_await c.read_until("\n", 1024, 60s);
        std::string reply(line);
        reply += '\n';
        co_await c.write(reply, 60s);
    }
}

// Calls to next() that threw std::bad_alloc.
std::atomic<int> next_failures{0};

// The README's accept loop, written as an application that survives running out of memory
// must write it: next() (before it takes a connection) and spawn() may throw std::bad_alloc,
// and the stream goes on.
task<> next_and_spawn(netloop::server& s) {
    auto conns = s.connections();
    for (;;) {
        std::optional<connection> conn;
        try {
            conn = co_await conns.next();
        } catch (const std::bad_alloc& e) {
            ++next_failures;
            if (auto l = netloop::logger()) l->error("next(): {}", e.what());
            continue;
        }
        if (!conn) co_return;
        try {
            netloop::spawn(echo_lines(std::move(*conn)));
        } catch (const std::bad_alloc& e) {
            if (auto l = netloop::logger()) l->error("spawn(): {}", e.what());
        }
    }
}

// The server on a loop of its own, run by a thread of its own: the only thread whose
// allocations fail. The server object is made here, before the thread starts, and outlives it,
// so that close() and stats() (safe from any thread) never meet a destroyed one.
class server_thread {
public:
    explicit server_thread(setup s)
        : setup_(s),
          server_(netloop::server::listen(netloop::address::parse("127.0.0.1:0"), listen_options(s),
                                          loop_)),
          ended_(done_.get_future()),
          thread_([this] { main(); }) {}
    ~server_thread() {
        if (thread_.joinable()) (void)stop();
    }
    server_thread(const server_thread&) = delete;
    server_thread& operator=(const server_thread&) = delete;

    [[nodiscard]] std::uint16_t port() const noexcept { return server_.local_port(); }
    [[nodiscard]] netloop::server_stats stats() const noexcept { return server_.stats(); }

    // True while the server's coroutine runs (serve() or the accept loop has not ended).
    [[nodiscard]] bool running() const { return ended_.wait_for(0s) != std::future_status::ready; }

    // Returns once every handler queued on the loop before the call has run.
    [[nodiscard]] bool barrier() {
        auto done = std::make_shared<std::promise<void>>();
        auto f = done->get_future();
        loop_.post([done] { done->set_value(); });
        return f.wait_for(10s) == std::future_status::ready;
    }

    // Closes the server and waits (bounded) for its loop to end; what it ended with ("" if
    // cleanly).
    std::string stop() {
        server_.close();
        if (ended_.wait_for(20s) != std::future_status::ready) {
            loop_.stop();
            thread_.join();
            return "the server did not end within 20 s of close()";
        }
        thread_.join();
        return failure_;
    }

    // What the server's coroutine ended with ("" if still running or ended cleanly).
    [[nodiscard]] std::string failure() const { return running() ? std::string() : failure_; }

private:
    static netloop::listen_options listen_options(const setup& s) {
        netloop::listen_options options;
        if (s.proxy) options.proxy_protocol = netloop::proxy_protocol::v1;
        return options;
    }

    void main() {
        on_loop_thread = true;
        try {
            netloop::run(
                [this]() -> task<> {
                    if (setup_.path == accept_path::serve) {
                        co_await server_.serve(echo_lines);
                    } else {
                        co_await next_and_spawn(server_);
                    }
                },
                netloop::run_options{.cancel_on_signal = false, .rethrow = true}, loop_);
        } catch (const std::exception& e) {
            failure_ = e.what();
        }
        done_.set_value();
    }

    setup setup_;
    netloop::loop loop_;
    netloop::server server_;
    std::string failure_;
    std::promise<void> done_;
    std::future<void> ended_;
    std::thread thread_;  // last: it starts once the rest is made
};

// A blocking client socket on the test thread; every call is bounded by SO_RCVTIMEO and
// SO_SNDTIMEO.
class client {
public:
    explicit client(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        REQUIRE(fd_ >= 0);
        timeval bound{.tv_sec = 5, .tv_usec = 0};
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound);
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0);
    }
    ~client() { ::close(fd_); }
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    enum outcome { echoed, closed, silent };

    // Sends `text` and waits for it to come back to its newline, or for the end of the
    // connection (EOF or reset).
    outcome exchange(const std::string& text) {
        std::size_t sent = 0;
        while (sent < text.size()) {
            auto n = ::send(fd_, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
            if (n <= 0) return n < 0 && errno == EAGAIN ? silent : closed;
            sent += static_cast<std::size_t>(n);
        }
        std::string got;
        char buf[256];
        for (;;) {
            auto n = ::recv(fd_, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return silent;
            if (n <= 0) return closed;
            got.append(buf, static_cast<std::size_t>(n));
            if (got.ends_with('\n')) break;
        }
        // The line, without the PROXY header the server consumed.
        auto line = text.substr(text.find("\r\n") == std::string::npos ? 0 : text.find("\r\n") + 2);
        return got == line ? echoed : closed;
    }

private:
    int fd_;
};

std::string message(const setup& s, const std::string& line) {
    return (s.proxy ? std::string("PROXY TCP4 192.0.2.7 127.0.0.1 4000 80\r\n") : std::string()) +
           line + "\n";
}

std::size_t open_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        ++n;
    }
    return n;
}

// Polls until the process is back at `fds` open descriptors with `active` connections (the
// other client's), then lets the loop run what it queued meanwhile; false after 5 s.
bool settled(server_thread& server, std::size_t fds, std::uint64_t active = 1) {
    auto until = std::chrono::steady_clock::now() + 5s;
    while (open_fds() != fds || server.stats().active != active) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return server.barrier() && server.barrier();
}

void run_cycles(const setup& s) {
    netloop::test::log_capture log(spdlog::level::warn);
    server_thread server(s);
    // A client connected all along: what one connection's failure must not touch.
    std::optional<client> other(std::in_place, server.port());
    REQUIRE(other->exchange(message(s, "other")) == client::echoed);
    {
        client warm_up(server.port());
        REQUIRE(warm_up.exchange(message(s, "warm-up")) == client::echoed);
    }
    const auto other_line = std::string("still here\n");
    std::size_t baseline = 0;
    {
        auto until = std::chrono::steady_clock::now() + 5s;
        while (server.stats().active != 1 && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(1ms);
        }
        REQUIRE(server.stats().active == 1);
        REQUIRE(server.barrier());
        baseline = open_fds();
    }

    std::uint64_t n = 1;
    for (;; ++n) {
        INFO("allocation " << n << " after the connect fails");
        REQUIRE(n < 5000);
        auto logged_before = log.text().size();
        auto next_failures_before = next_failures.load();
        allocations = 0;
        fail_at = n;
        armed = true;
        client::outcome how = client::silent;
        {
            client c(server.port());
            how = c.exchange(message(s, "cycle " + std::to_string(n)));
        }
        bool back = settled(server, baseline);
        armed = false;
        auto made = allocations.load();
        bool injected = made >= n;
        CAPTURE(made, how);
        INFO("logged: " << log.text().substr(logged_before));
        INFO("the server ended with: " << server.failure());
        // The server goes on, the connection ended (or was served) within the bound, and
        // released everything.
        REQUIRE(server.running());
        REQUIRE(how != client::silent);
        REQUIRE(back);
        // next() throws only before it takes a connection: the one it took is served.
        if (next_failures.load() != next_failures_before) CHECK(how == client::echoed);
        if (injected) {
            CHECK(log.text().substr(logged_before).find("injected allocation failure") !=
                  std::string::npos);
        } else {
            CHECK(how == client::echoed);
        }
        // The server goes on: the connection it had before, and a new one.
        REQUIRE(other->exchange(other_line) == client::echoed);
        {
            client fresh(server.port());
            REQUIRE(fresh.exchange(message(s, "fresh")) == client::echoed);
        }
        REQUIRE(settled(server, baseline));
        if (!injected) break;
    }
    // Every allocation the cycle makes was made to fail once, and the cycle then passed whole;
    // a cycle makes about a dozen (Asio serves its frames and operations from a per-thread
    // cache), so a handful proves the replaced operator new reaches the library's.
    CHECK(n > 5);
    // The other client leaves first, so that stopping waits for no lingering close.
    other.reset();
    REQUIRE(settled(server, baseline - 2, 0));
    REQUIRE(server.stop().empty());
}

}  // namespace

TEST_CASE("an allocation failure anywhere on serve()'s connection path costs only that connection",
          "[alloc_failure]") {
    run_cycles({.path = accept_path::serve, .proxy = false});
}

TEST_CASE(
    "an allocation failure anywhere on the next() and spawn() path costs only that "
    "connection",
    "[alloc_failure]") {
    run_cycles({.path = accept_path::next_spawn, .proxy = false});
}

TEST_CASE(
    "an allocation failure anywhere on a PROXY listener's serve() path costs only that "
    "connection",
    "[alloc_failure]") {
    run_cycles({.path = accept_path::serve, .proxy = true});
}

TEST_CASE(
    "an allocation failure anywhere on a PROXY listener's next() path costs only that "
    "connection",
    "[alloc_failure]") {
    run_cycles({.path = accept_path::next_spawn, .proxy = true});
}
