// SPDX-License-Identifier: MIT
// stream: the bytes of one connection, over a plain socket or TLS, chosen once when it is made.
#pragma once

#include <memory>
#include <utility>

#include <asio/write.hpp>

#include <netloop/config.hpp>

#include "endpoint.hpp"
#include "tls.hpp"

namespace netloop::detail {

// The one place that knows whether a connection speaks TLS: reads, writes and the close go
// through here, and nothing above it branches on the transport.
class stream {
public:
    explicit stream(stream_socket s) noexcept : socket_(std::move(s)) {}

    template <typename Buffers, typename Token>
    auto async_read_some(const Buffers& buffers, Token&& token) {
#if NETLOOP_HAS_TLS
        if (tls_) return tls_->async_read_some(buffers, std::forward<Token>(token));
#endif
        return socket_.async_read_some(buffers, std::forward<Token>(token));
    }

    // Writes everything (or fails), asking `condition` between partial writes.
    template <typename Buffers, typename Condition, typename Token>
    auto async_write(const Buffers& buffers, Condition condition, Token&& token) {
#if NETLOOP_HAS_TLS
        if (tls_) return asio::async_write(*tls_, buffers, condition, std::forward<Token>(token));
#endif
        return asio::async_write(socket_, buffers, condition, std::forward<Token>(token));
    }

    [[nodiscard]] stream_socket& socket() noexcept { return socket_; }
    [[nodiscard]] const stream_socket& socket() const noexcept { return socket_; }

    [[nodiscard]] bool is_tls() const noexcept {
#if NETLOOP_HAS_TLS
        return tls_ != nullptr;
#else
        return false;
#endif
    }

#if NETLOOP_HAS_TLS
    // Puts TLS on top of the socket, with the context it needs kept alive.
    tls_stream& start_tls(std::shared_ptr<tls_state> settings) {
        tls_ = std::make_unique<tls_stream>(socket_, settings->context.native_handle());
        settings_ = std::move(settings);
        return *tls_;
    }
    [[nodiscard]] tls_stream* tls() noexcept { return tls_.get(); }
#endif

    // Half-close: TLS's close_notify, or shutdown(SHUT_WR); reading goes on.
    void shutdown_send() noexcept;

    // True if a read would not wait: bytes (or the peer's EOF, or an error) are in the kernel,
    // or decrypted ones inside OpenSSL. One non-blocking peek; asked only during a drain.
    [[nodiscard]] bool input_waiting() noexcept;

private:
    stream_socket socket_;
#if NETLOOP_HAS_TLS
    std::shared_ptr<tls_state> settings_;
    std::unique_ptr<tls_stream> tls_;  // declared after the socket: destroyed first
#endif
};

}  // namespace netloop::detail
