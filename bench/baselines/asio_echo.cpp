// SPDX-License-Identifier: MIT
// asio_echo: the classic Asio callback echo server (one io_context, one thread), a baseline.
//
// The shape of Asio's own async_tcp_echo_server example: a shared_ptr session per connection,
// async_read_some into a member array, async_write of what was read, repeat. The io_context is
// constructed with concurrency hint 1 and run by the main thread alone.
// Usage: asio_echo [HOST:PORT] [--nodelay]
//   HOST an IP literal ([v6] in brackets), port 0 ok; --nodelay: TCP_NODELAY on accepted
//   connections (off by default, as in netloop).

#include <array>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
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

class session : public std::enable_shared_from_this<session> {
public:
    explicit session(tcp::socket socket) : socket_(std::move(socket)) {}

    void start() { read(); }

private:
    void read() {
        socket_.async_read_some(asio::buffer(data_), [this, self = shared_from_this()](
                                                         std::error_code ec, std::size_t n) {
            if (!ec) write(n);
        });
    }

    void write(std::size_t n) {
        asio::async_write(socket_, asio::buffer(data_, n),
                          [this, self = shared_from_this()](std::error_code ec, std::size_t) {
                              if (!ec) read();
                          });
    }

    tcp::socket socket_;
    std::array<char, 4096> data_;  // the 4 KiB array of samples/echo
};

class server {
public:
    server(asio::io_context& context, const tcp::endpoint& at, bool nodelay)
        : acceptor_(context), nodelay_(nodelay) {
        acceptor_.open(at.protocol());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        if (at.address().is_v6()) acceptor_.set_option(asio::ip::v6_only(true));
        acceptor_.bind(at);
        acceptor_.listen(128);  // netloop's default backlog
    }

    [[nodiscard]] tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }

    void start() { accept(); }

    void close() {
        std::error_code ignored;
        acceptor_.close(ignored);
    }

private:
    void accept() {
        acceptor_.async_accept([this](std::error_code ec, tcp::socket socket) {
            if (ec == asio::error::operation_aborted) return;
            if (!ec) {
                if (nodelay_) socket.set_option(tcp::no_delay(true), ec);
                std::make_shared<session>(std::move(socket))->start();
            }
            accept();
        });
    }

    tcp::acceptor acceptor_;
    bool nodelay_;
};

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
        std::fprintf(stderr, "asio_echo: bad address %s (want host:port or [v6]:port)\n",
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
        server s(context, at, nodelay);
        asio::signal_set signals(context, SIGINT, SIGTERM);
        signals.async_wait([&](std::error_code, int) {
            s.close();
            context.stop();  // a baseline: the sessions are freed with the io_context
        });
        auto local = s.local_endpoint();
        if (local.address().is_v6())
            std::printf("listening on [%s]:%u\n", local.address().to_string().c_str(),
                        local.port());
        else
            std::printf("listening on %s:%u\n", local.address().to_string().c_str(), local.port());
        std::fflush(stdout);
        s.start();
        context.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "asio_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
