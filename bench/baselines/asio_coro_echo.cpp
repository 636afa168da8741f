// SPDX-License-Identifier: MIT
// asio_coro_echo: raw Asio C++20 coroutines echo server (one io_context, one thread), a baseline.
//
// The shape of Asio's own cpp20 echo example: an awaitable accept loop co_spawns one awaitable
// per connection, which co_awaits async_read_some into a 4 KiB local array with use_awaitable,
// then async_write of what was read, and repeats until an error. The io_context is constructed
// with concurrency hint 1 and run by the main thread alone. Needs ASIO_HAS_CO_AWAIT and
// ASIO_HAS_STD_COROUTINE (the build defines them: Asio 1.22 does not detect them under clang 14).
// Usage: asio_coro_echo [HOST:PORT] [--nodelay]
//   HOST an IP literal ([v6] in brackets), port 0 ok; --nodelay: TCP_NODELAY on accepted
//   connections (off by default, as in netloop).

#include <array>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <sys/resource.h>
#include <system_error>
#include <utility>

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/signal_set.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

namespace {

using asio::ip::tcp;

asio::awaitable<void> echo(tcp::socket socket) {
    try {
        std::array<char, 4096> data;  // the 4 KiB array of samples/echo
        for (;;) {
            std::size_t n =
                co_await socket.async_read_some(asio::buffer(data), asio::use_awaitable);
            co_await asio::async_write(socket, asio::buffer(data, n), asio::use_awaitable);
        }
    } catch (const std::exception&) {
        // end of stream or error: the session ends, the socket closes
    }
}

asio::awaitable<void> listen(tcp::acceptor& acceptor, bool nodelay) {
    for (;;) {
        try {
            tcp::socket socket = co_await acceptor.async_accept(asio::use_awaitable);
            std::error_code ignored;
            if (nodelay) socket.set_option(tcp::no_delay(true), ignored);
            asio::co_spawn(acceptor.get_executor(), echo(std::move(socket)), asio::detached);
        } catch (const std::system_error& e) {
            if (e.code() == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        }
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
        std::fprintf(stderr, "asio_coro_echo: bad address %s (want host:port or [v6]:port)\n",
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
            context.stop();  // a baseline: the sessions' frames are freed with the io_context
        });
        auto local = acceptor.local_endpoint();
        if (local.address().is_v6())
            std::printf("listening on [%s]:%u\n", local.address().to_string().c_str(),
                        local.port());
        else
            std::printf("listening on %s:%u\n", local.address().to_string().c_str(), local.port());
        std::fflush(stdout);
        asio::co_spawn(context, listen(acceptor, nodelay), asio::detached);
        context.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "asio_coro_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
