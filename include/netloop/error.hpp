// SPDX-License-Identifier: MIT
// netloop::error, the one exception type of the library, and errc, what it can say.
#pragma once

#include <netloop/detail/config.hpp>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>

#include <netloop/export.hpp>

namespace netloop {

/// What failed. The values of the `"netloop"` error category.
enum class errc {
    socket_creation_failed = 1,  ///< socket() failed (EMFILE, EAFNOSUPPORT, ...).
    bind_failed,                 ///< bind() failed (EADDRINUSE, EACCES, EADDRNOTAVAIL, ...).
    listen_failed,               ///< listen() failed.
    accept_failed,               ///< accept() failed with an error that is not transient.
    connect_failed,              ///< connect() failed (ECONNREFUSED, ENETUNREACH, ...).
    connection_closed,           ///< the peer closed its side in order (EOF), or we closed it.
    connection_reset,            ///< the peer reset the connection (ECONNRESET, EPIPE).
    timeout,                     ///< the call's timeout expired; the connection stays usable.
    message_too_large,           ///< a frame exceeded the caller's `max_length`.
    invalid_address,             ///< text that is not an `ip:port` address.
    cancelled,                   ///< the awaiting task was cancelled.
    read_failed,                 ///< a read failed for another reason (errno says which).
    write_failed,                ///< a write failed for another reason (errno says which).
    signal_failed,               ///< a signal could not be watched.
    invalid_argument,            ///< a caller passed a value outside the documented range.
    protocol_error,              ///< a peer sent bytes that its protocol does not allow.
    activation_failed,           ///< the LISTEN_FDS environment is wrong; nothing was adopted.
    spawn_failed,                ///< a successor process could not be started or never got ready.
    resolve_failed,              ///< a host name did not resolve (no such name, no resolver).
    option_failed,               ///< a socket option could not be set.
    tls_failed,                  ///< a TLS handshake, certificate or record failed.
    not_supported,               ///< the feature is Linux-only and this system is not Linux.
};

/// The `"netloop"` error category.
[[nodiscard]] NETLOOP_API const std::error_category& error_category() noexcept;

/// Makes an `std::error_code` of the `"netloop"` category, so `code == errc::timeout` works.
[[nodiscard]] NETLOOP_API std::error_code make_error_code(errc e) noexcept;

/// The exception thrown by every netloop call that fails.
///
/// `what()` reads `"<operation> <address>: <reason>"`, e.g.
/// `bind 0.0.0.0:8080: Address already in use`. `code()` compares equal to the `errc`.
class NETLOOP_API error : public std::system_error {
public:
    /// `operation` names what failed ("bind 0.0.0.0:8080"); `sys_errno` is the raw errno of the
    /// failing system call, 0 where there is none.
    error(errc kind, const std::string& operation, int sys_errno = 0,
          std::size_t bytes_written = 0);

    /// What failed, as an `errc`.
    [[nodiscard]] errc kind() const noexcept { return kind_; }

    /// The errno of the failing system call, 0 where there is none (a timeout, bad text).
    [[nodiscard]] int sys_errno() const noexcept { return sys_errno_; }

    /// The errno as an `std::error_code` of the system category (empty where there is none).
    [[nodiscard]] std::error_code sys_code() const noexcept;

    /// For a failed `write()`: how many bytes were written before it failed; 0 otherwise.
    [[nodiscard]] std::size_t bytes_written() const noexcept { return bytes_written_; }

    [[nodiscard]] const char* what() const noexcept override { return message_.what(); }

private:
    errc kind_;
    int sys_errno_;
    std::size_t bytes_written_;
    std::runtime_error message_;  // nothrow-copyable string
};

}  // namespace netloop

template <>
struct std::is_error_code_enum<netloop::errc> : std::true_type {};
