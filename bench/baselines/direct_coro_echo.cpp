// SPDX-License-Identifier: MIT
// direct_coro_echo: C++20 coroutines resumed straight from Asio's completion handler, a baseline.
//
// What a coroutine on Asio's reactor can cost at the least: a minimal detached coroutine type
// (starts at once, frees its frame at the end, no awaitable thread, no cancellation state)
// whose awaiters start socket.async_read_some, async_write or async_accept with a plain
// handler that stores the result and resumes the coroutine handle directly. An accept loop
// starts one coroutine per connection, which reads into a 4 KiB local array and writes back
// what it read, until an error (EOF included, as an error_code: nothing throws). One
// io_context(1), one thread.
// Usage: direct_coro_echo [HOST:PORT] [--nodelay]
//   HOST an IP literal ([v6] in brackets), port 0 ok; --nodelay: TCP_NODELAY on accepted
//   connections (off by default, as in netloop).

#include <array>
#include <coroutine>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <sys/resource.h>
#include <system_error>
#include <utility>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/signal_set.hpp>
#include <asio/write.hpp>

namespace {

using asio::ip::tcp;

// A detached coroutine: runs until its first suspension when called, destroys itself at the end.
struct detached {
    struct promise_type {
        detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
};

// co_await read_some(socket, buffer): the handler stores (error, count) and resumes.
struct read_some {
    tcp::socket& socket;
    asio::mutable_buffer buffer;
    std::error_code ec{};
    std::size_t n = 0;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        socket.async_read_some(buffer, [this, h](std::error_code e, std::size_t count) {
            ec = e;
            n = count;
            h.resume();
        });
    }
    std::pair<std::error_code, std::size_t> await_resume() const noexcept { return {ec, n}; }
};

// co_await write_all(socket, buffer): asio::async_write with a plain handler.
struct write_all {
    tcp::socket& socket;
    asio::const_buffer buffer;
    std::error_code ec{};
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        asio::async_write(socket, buffer, [this, h](std::error_code e, std::size_t) {
            ec = e;
            h.resume();
        });
    }
    std::error_code await_resume() const noexcept { return ec; }
};

// co_await accept(acceptor): the accepted socket, or the error.
struct accept {
    tcp::acceptor& acceptor;
    std::error_code ec{};
    std::optional<tcp::socket> socket{};
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        acceptor.async_accept([this, h](std::error_code e, tcp::socket s) {
            ec = e;
            if (!e) socket.emplace(std::move(s));
            h.resume();
        });
    }
    std::pair<std::error_code, std::optional<tcp::socket>> await_resume() noexcept {
        return {ec, std::move(socket)};
    }
};

detached echo(tcp::socket socket) {
    std::array<char, 4096> data;  // the 4 KiB array of samples/echo
    for (;;) {
        auto [ec, n] = co_await read_some{socket, asio::buffer(data)};
        if (ec) break;  // end of stream or error: the session ends, the socket closes
        auto wec = co_await write_all{socket, asio::buffer(data, n)};
        if (wec) break;
    }
}

detached listen(tcp::acceptor& acceptor, bool nodelay) {
    for (;;) {
        auto [ec, socket] = co_await accept{acceptor};
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
            continue;
        }
        std::error_code ignored;
        if (nodelay) socket->set_option(tcp::no_delay(true), ignored);
        echo(std::move(*socket));
    }
}

tcp::endpoint parse_endpoint(const std::string& text) {
    std::string host;
    std::string port;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
            throw std::invalid_argument(text);
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string::npos) throw std::invalid_argument(text);
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    unsigned long p = std::stoul(port);
    if (p > 65535) throw std::invalid_argument(text);
    return {asio::ip::make_address(host), static_cast<unsigned short>(p)};
}

}  // namespace

int main(int argc, char** argv) {
    std::string where = "0.0.0.0:8080";
    bool nodelay = false;
    for (int i = 1; i < argc; ++i) {
        if (std::string(argv[i]) == "--nodelay")
            nodelay = true;
        else
            where = argv[i];
    }
    tcp::endpoint at;
    try {
        at = parse_endpoint(where);
    } catch (const std::exception&) {
        std::fprintf(stderr, "direct_coro_echo: bad address %s (want host:port or [v6]:port)\n",
                     where.c_str());
        return 2;
    }
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    try {
        asio::io_context context(1);
        tcp::acceptor acceptor(context);
        acceptor.open(at.protocol());
        acceptor.set_option(tcp::acceptor::reuse_address(true));
        if (at.address().is_v6()) acceptor.set_option(asio::ip::v6_only(true));
        acceptor.bind(at);
        acceptor.listen(128);  // netloop's default backlog
        asio::signal_set signals(context, SIGINT, SIGTERM);
        signals.async_wait([&](std::error_code, int) {
            std::error_code ignored;
            acceptor.close(ignored);
            // A baseline: the sessions' pending handlers (and so their frames) die with the
            // io_context, unresumed.
            context.stop();
        });
        auto local = acceptor.local_endpoint();
        if (local.address().is_v6())
            std::printf("listening on [%s]:%u\n", local.address().to_string().c_str(),
                        local.port());
        else
            std::printf("listening on %s:%u\n", local.address().to_string().c_str(), local.port());
        std::fflush(stdout);
        listen(acceptor, nodelay);
        context.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "direct_coro_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
