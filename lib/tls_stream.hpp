// SPDX-License-Identifier: MIT
// tls_stream: OpenSSL straight on the socket, as nginx and HAProxy run it.
#pragma once

#include <netloop/config.hpp>

#if NETLOOP_HAS_TLS

#include <cstddef>

#include <asio/buffer.hpp>
#include <asio/cancellation_type.hpp>
#include <asio/compose.hpp>
#include <asio/error.hpp>
#include <asio/post.hpp>
#include <asio/ssl/error.hpp>

#include "endpoint.hpp"
#include <openssl/ssl.h>

namespace netloop::detail {

// One TLS connection on a socket. OpenSSL reads and writes the socket's fd itself, through a
// BIO that calls recv/send (MSG_NOSIGNAL): no BIO pair, no second copy of each record, and no
// 34 KiB of buffers per connection beside OpenSSL's own, which SSL_MODE_RELEASE_BUFFERS gives
// back while the connection idles. An operation calls OpenSSL; when OpenSSL needs the socket
// readable or writable it waits for that in Asio's reactor and calls again. The call ran until
// the socket said EAGAIN, so the edge-triggered readiness that ends the wait is a new one.
//
// Operations complete like Asio's ssl::stream's: the peer's close_notify is asio::error::eof,
// an EOF without one asio::ssl::error::stream_truncated, a TLS failure an error of Asio's SSL
// category (OpenSSL's error code), a socket failure its errno. One read and one write may be
// pending together. Every kind of cancellation cancels the wait in progress.
class tls_stream {
public:
    using executor_type = stream_socket::executor_type;
    enum role { client, server };

    // Throws error(tls_failed) if OpenSSL cannot make the connection.
    tls_stream(stream_socket& socket, SSL_CTX* context);
    ~tls_stream();
    tls_stream(const tls_stream&) = delete;
    tls_stream& operator=(const tls_stream&) = delete;

    [[nodiscard]] SSL* native_handle() noexcept { return ssl_; }
    [[nodiscard]] executor_type get_executor() noexcept { return socket_.get_executor(); }

    // void(error_code)
    template <typename Token>
    auto async_handshake(role r, Token&& token) {
        if (r == server) {
            ::SSL_set_accept_state(ssl_);
        } else {
            ::SSL_set_connect_state(ssl_);
        }
        return start<false>([this](std::size_t&) { return ::SSL_do_handshake(ssl_); },
                            std::forward<Token>(token));
    }

    // void(error_code, std::size_t): some bytes of the first non-empty buffer.
    template <typename Buffers, typename Token>
    auto async_read_some(const Buffers& buffers, Token&& token) {
        auto b =
            asio::detail::buffer_sequence_adapter<asio::mutable_buffer, Buffers>::first(buffers);
        return start<true>(
            [this, b](std::size_t& n) {
                return b.size() == 0 ? 1 : ::SSL_read_ex(ssl_, b.data(), b.size(), &n);
            },
            std::forward<Token>(token));
    }

    // void(error_code, std::size_t): some bytes of the first non-empty buffer, whole records.
    template <typename Buffers, typename Token>
    auto async_write_some(const Buffers& buffers, Token&& token) {
        auto b = asio::detail::buffer_sequence_adapter<asio::const_buffer, Buffers>::first(buffers);
        return start<true>(
            [this, b](std::size_t& n) {
                return b.size() == 0 ? 1 : ::SSL_write_ex(ssl_, b.data(), b.size(), &n);
            },
            std::forward<Token>(token));
    }

    // void(error_code): sends close_notify; unless SSL_RECEIVED_SHUTDOWN is already set, then
    // waits for the peer's (SSL_shutdown's two steps, as Asio's async_shutdown).
    template <typename Token>
    auto async_shutdown(Token&& token) {
        return start<false>(
            [this](std::size_t&) {
                int r = ::SSL_shutdown(ssl_);
                return r == 0 ? ::SSL_shutdown(ssl_) : r;
            },
            std::forward<Token>(token));
    }

    // For the BIO (tls_stream.cpp).
    [[nodiscard]] int fd() noexcept { return socket_.native_handle(); }
    int last_errno = 0;  // of the last send/recv that failed, not EAGAIN
    bool eof = false;    // recv returned 0

private:
    enum class step { done, want_read, want_write };

    // What an OpenSSL call's result asks for; for `done`, `ec` is its outcome.
    step after(int result, asio::error_code& ec) noexcept;

    template <bool WithSize, typename Call, typename Token>
    auto start(Call call, Token&& token) {
        using signature = std::conditional_t<WithSize, void(asio::error_code, std::size_t),
                                             void(asio::error_code)>;
        return asio::async_compose<Token, signature>(op<WithSize, Call>{*this, call}, token,
                                                     socket_);
    }

    // Calls OpenSSL until it is done, waiting for the socket in between. An outcome on the
    // first call, before any wait, is posted: a handler never runs inside its initiation.
    template <bool WithSize, typename Call>
    struct op {
        tls_stream& stream;
        Call call;
        enum { first, waiting, posted } state = first;
        asio::error_code result{};
        std::size_t bytes = 0;

        template <typename Self>
        void operator()(Self& self, asio::error_code ec = {}) {
            if (state == first) {
                self.reset_cancellation_state(asio::enable_total_cancellation());
            } else if (state == posted) {
                return finish(self);
            } else if (ec ||
                       self.get_cancellation_state().cancelled() != asio::cancellation_type::none) {
                // The wait ended: cancelled, or the socket closed (the stream may be gone). A
                // cancellation that came after the wait had completed, while its handler was
                // queued, reached no wait: it ends the operation here, or a deadline would be lost
                // to a peer that keeps sending.
                result = ec ? ec : asio::error_code(asio::error::operation_aborted);
                bytes = 0;
                return finish(self);
            }
            bytes = 0;
            ::ERR_clear_error();
            stream.last_errno = 0;
            auto next = stream.after(call(bytes), result);
            if (next == step::want_read || next == step::want_write) {
                state = waiting;
                stream.socket_.async_wait(next == step::want_read ? asio::socket_base::wait_read
                                                                  : asio::socket_base::wait_write,
                                          std::move(self));
                return;
            }
            if (state == first) {
                state = posted;
                asio::post(std::move(self));
                return;
            }
            finish(self);
        }

        template <typename Self>
        void finish(Self& self) {
            if constexpr (WithSize) {
                self.complete(result, result ? 0 : bytes);
            } else {
                self.complete(result);
            }
        }
    };

    stream_socket& socket_;
    SSL* ssl_ = nullptr;
};

}  // namespace netloop::detail

#endif
