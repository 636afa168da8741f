// SPDX-License-Identifier: MIT
// The "netloop" error category and netloop::error.
#include <cstring>

#include <netloop/error.hpp>

namespace netloop {
namespace {

class category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "netloop"; }

    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::socket_creation_failed:
                return "socket creation failed";
            case errc::bind_failed:
                return "bind failed";
            case errc::listen_failed:
                return "listen failed";
            case errc::accept_failed:
                return "accept failed";
            case errc::connect_failed:
                return "connect failed";
            case errc::connection_closed:
                return "connection closed";
            case errc::connection_reset:
                return "connection reset by peer";
            case errc::timeout:
                return "timed out";
            case errc::message_too_large:
                return "message too large";
            case errc::invalid_address:
                return "invalid address";
            case errc::cancelled:
                return "cancelled";
            case errc::read_failed:
                return "read failed";
            case errc::write_failed:
                return "write failed";
            case errc::signal_failed:
                return "signal handling failed";
            case errc::invalid_argument:
                return "invalid argument";
            case errc::protocol_error:
                return "protocol error";
            case errc::activation_failed:
                return "socket activation failed";
            case errc::spawn_failed:
                return "starting a successor failed";
            case errc::resolve_failed:
                return "name resolution failed";
            case errc::option_failed:
                return "setting a socket option failed";
            case errc::tls_failed:
                return "TLS failed";
            case errc::not_supported:
                return "not supported on this system";
        }
        return "unknown netloop error";
    }

    // The portable meaning of an errc, so `code == std::errc::timed_out` holds. Only the kinds
    // that mean one errno are mapped; the rest (bind_failed, connect_failed, ...) stand for many
    // errnos, which error::sys_code() carries. doc/errors.md has the table.
    std::error_condition default_error_condition(int value) const noexcept override {
        switch (static_cast<errc>(value)) {
            case errc::timeout:
                return std::errc::timed_out;
            case errc::connection_reset:
                return std::errc::connection_reset;
            case errc::cancelled:
                return std::errc::operation_canceled;
            case errc::message_too_large:
                return std::errc::message_size;
            case errc::invalid_address:
            case errc::invalid_argument:
                return std::errc::invalid_argument;
            case errc::protocol_error:
                return std::errc::protocol_error;
            default:
                return {value, *this};
        }
    }
};

std::string describe(errc kind, const std::string& operation, int sys_errno) {
    std::string reason =
        sys_errno != 0 ? std::strerror(sys_errno) : make_error_code(kind).message();
    return operation.empty() ? reason : operation + ": " + reason;
}

}  // namespace

const std::error_category& error_category() noexcept {
    static const category_impl instance;
    return instance;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

error::error(errc kind, const std::string& operation, int sys_errno, std::size_t bytes_written)
    : std::system_error(make_error_code(kind)),
      kind_(kind),
      sys_errno_(sys_errno),
      bytes_written_(bytes_written),
      message_(describe(kind, operation, sys_errno)) {}

std::error_code error::sys_code() const noexcept {
    return sys_errno_ != 0 ? std::error_code(sys_errno_, std::system_category())
                           : std::error_code();
}

}  // namespace netloop
