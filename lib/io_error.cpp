// SPDX-License-Identifier: MIT
// The error of a failed read, write or handshake: Asio's codes to errc, translated once.
#include <netloop/error.hpp>

#include "connection_impl.hpp"

namespace netloop::detail {

error connection_impl::failure(const char* operation, const asio::error_code& ec,
                               const direction& d, std::size_t bytes_written) const {
    bool reading = operation[0] == 'r';
    if (ec == asio::error::eof) {
        peer_closed = true;
        return error(errc::connection_closed, describe(operation) + " (peer closed)", 0,
                     bytes_written);
    }
    if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
        if (limit_expired) return error(errc::timeout, describe(operation), 0, bytes_written);
        if (d.drained) return drained_error(operation);
        if (closed) return error(errc::connection_closed, describe(operation), 0, bytes_written);
        if (d.expired) return error(errc::timeout, describe(operation), 0, bytes_written);
        return error(errc::cancelled, describe(operation), 0, bytes_written);
    }
    if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
        return error(errc::connection_reset, describe(operation), ec.value(), bytes_written);
    }
#if NETLOOP_HAS_TLS
    if (ec == asio::ssl::error::stream_truncated) {  // EOF without close_notify
        return error(errc::connection_closed, describe(operation) + " (peer closed, no TLS close)",
                     0, bytes_written);
    }
    if (ec.category() == asio::error::get_ssl_category()) {
        return error(errc::tls_failed, describe(operation) + " (" + ec.message() + ")", 0,
                     bytes_written);
    }
#endif
    return error(reading ? errc::read_failed : errc::write_failed, describe(operation), ec.value(),
                 bytes_written);
}

}  // namespace netloop::detail
