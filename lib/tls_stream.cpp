// SPDX-License-Identifier: MIT
// tls_stream: the BIO that lets OpenSSL read and write the socket, and its results in Asio's
// error codes.
#include "tls_stream.hpp"

#if NETLOOP_HAS_TLS

#include <cerrno>
#include <sys/socket.h>

#include <netloop/error.hpp>

#include <openssl/bio.h>
#include <openssl/err.h>

namespace netloop::detail {
namespace {

tls_stream& owner(BIO* bio) noexcept { return *static_cast<tls_stream*>(::BIO_get_data(bio)); }

int bio_write(BIO* bio, const char* data, std::size_t size, std::size_t* written) {
    auto& s = owner(bio);
    ::BIO_clear_retry_flags(bio);
    for (;;) {
        auto n = ::send(s.fd(), data, size, MSG_NOSIGNAL);
        if (n >= 0) {
            *written = static_cast<std::size_t>(n);
            return 1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            ::BIO_set_retry_write(bio);
        } else {
            s.last_errno = errno;
        }
        return 0;
    }
}

int bio_read(BIO* bio, char* data, std::size_t size, std::size_t* read) {
    auto& s = owner(bio);
    ::BIO_clear_retry_flags(bio);
    for (;;) {
        auto n = ::recv(s.fd(), data, size, 0);
        if (n > 0) {
            *read = static_cast<std::size_t>(n);
            return 1;
        }
        if (n == 0) {
            s.eof = true;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            ::BIO_set_retry_read(bio);
        } else {
            s.last_errno = errno;
        }
        return 0;
    }
}

long bio_ctrl(BIO* bio, int command, long, void*) {
    switch (command) {
        case BIO_CTRL_FLUSH:
            return 1;
        case BIO_CTRL_EOF:  // OpenSSL tells an EOF (unexpected, without close_notify) by this
            return owner(bio).eof ? 1 : 0;
        default:
            return 0;
    }
}

int bio_create(BIO* bio) {
    ::BIO_set_init(bio, 1);
    return 1;
}

int bio_destroy(BIO*) { return 1; }  // the socket is the stream's, closed by its owner

// Made once; OpenSSL keeps no per-thread state in a BIO_METHOD.
BIO_METHOD* socket_method() {
    static BIO_METHOD* method = [] {
        auto* m = ::BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "netloop socket");
        if (m == nullptr || ::BIO_meth_set_write_ex(m, bio_write) != 1 ||
            ::BIO_meth_set_read_ex(m, bio_read) != 1 || ::BIO_meth_set_ctrl(m, bio_ctrl) != 1 ||
            ::BIO_meth_set_create(m, bio_create) != 1 ||
            ::BIO_meth_set_destroy(m, bio_destroy) != 1) {
            ::BIO_meth_free(m);
            return static_cast<BIO_METHOD*>(nullptr);
        }
        return m;
    }();
    return method;
}

}  // namespace

tls_stream::tls_stream(stream_socket& socket, SSL_CTX* context) : socket_(socket) {
    auto* method = socket_method();
    ssl_ = method != nullptr ? ::SSL_new(context) : nullptr;
    BIO* bio = ssl_ != nullptr ? ::BIO_new(method) : nullptr;
    if (bio == nullptr) {
        ::SSL_free(ssl_);
        ::ERR_clear_error();
        throw error(errc::tls_failed, "TLS (OpenSSL could not make a connection)");
    }
    ::BIO_set_data(bio, this);
    ::SSL_set_bio(ssl_, bio, bio);  // one BIO both ways: SSL_set_bio takes one reference
    // As Asio's stream: a write completes with the records sent so far, and a write retried
    // after WANT_WRITE may come from another address (a coroutine frame's buffer moves).
    ::SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    // One recv takes whatever has arrived (as nginx has it), not a record's 5-byte header and
    // then its body: a flight of several records is one call, not two per record.
    ::SSL_set_read_ahead(ssl_, 1);
}

tls_stream::~tls_stream() { ::SSL_free(ssl_); }

tls_stream::step tls_stream::after(int result, asio::error_code& ec) noexcept {
    if (result > 0) {
        ec = {};
        return step::done;
    }
    switch (::SSL_get_error(ssl_, result)) {
        case SSL_ERROR_WANT_READ:
            return step::want_read;
        case SSL_ERROR_WANT_WRITE:
            return step::want_write;
        case SSL_ERROR_ZERO_RETURN:  // the peer's close_notify
            ec = asio::error::eof;
            break;
        case SSL_ERROR_SYSCALL:
            // A socket error, or (an OpenSSL that reports it so) an EOF without close_notify.
            ec = last_errno != 0 ? asio::error_code(last_errno, asio::error::get_system_category())
                                 : asio::error_code(asio::ssl::error::stream_truncated);
            break;
        default: {
            auto e = ::ERR_get_error();
            if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                ec = asio::ssl::error::stream_truncated;
            } else if (e == 0) {  // no reason given: a socket error, or none known
                ec = last_errno != 0
                         ? asio::error_code(last_errno, asio::error::get_system_category())
                         : asio::error_code(asio::ssl::error::unexpected_result);
            } else {
                ec = asio::error_code(static_cast<int>(e), asio::error::get_ssl_category());
            }
            break;
        }
    }
    ::ERR_clear_error();
    return step::done;
}

}  // namespace netloop::detail

#endif
