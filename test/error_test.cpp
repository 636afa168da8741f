// SPDX-License-Identifier: MIT
// error and errc: the category, std::error_code interop, and what() naming what failed.
#include <cerrno>
#include <cstring>
#include <type_traits>

#include <netloop/error.hpp>

#include "support/catch.hpp"

static_assert(std::is_base_of_v<std::system_error, netloop::error>);
static_assert(std::is_error_code_enum_v<netloop::errc>);
static_assert(std::is_nothrow_copy_constructible_v<netloop::error>);

using netloop::errc;

TEST_CASE("errc values compare with std::error_code", "[error]") {
    std::error_code code = errc::timeout;
    CHECK(code == errc::timeout);
    CHECK(code != errc::connection_closed);
    CHECK(code.category().name() == std::string("netloop"));
    CHECK(code.message() == "timed out");
    CHECK(make_error_code(errc::bind_failed).message() == "bind failed");
}

TEST_CASE("what() reads '<operation> <address>: <strerror>'", "[error]") {
    netloop::error e(errc::bind_failed, "bind 0.0.0.0:8080", EADDRINUSE);
    CHECK(std::string(e.what()) == std::string("bind 0.0.0.0:8080: ") + std::strerror(EADDRINUSE));
    CHECK(e.kind() == errc::bind_failed);
    CHECK(e.sys_errno() == EADDRINUSE);
    CHECK(e.sys_code() == std::errc::address_in_use);
    CHECK(e.code() == errc::bind_failed);
}

TEST_CASE("without an errno, what() gives the errc's message", "[error]") {
    netloop::error e(errc::timeout, "read 127.0.0.1:5000", 0, 42);
    CHECK(std::string(e.what()) == "read 127.0.0.1:5000: timed out");
    CHECK(e.bytes_written() == 42);
    CHECK_FALSE(e.sys_code());
}

TEST_CASE("every errc has its own message", "[error]") {
    for (int v = static_cast<int>(errc::socket_creation_failed);
         v <= static_cast<int>(errc::not_supported); ++v) {
        CAPTURE(v);
        CHECK(netloop::error_category().message(v) != "unknown netloop error");
    }
}

TEST_CASE("errc values compare equal to the std::errc conditions of doc/errors.md", "[error]") {
    CHECK(std::error_code(errc::timeout) == std::errc::timed_out);
    CHECK(std::error_code(errc::connection_reset) == std::errc::connection_reset);
    CHECK(std::error_code(errc::cancelled) == std::errc::operation_canceled);
    CHECK(std::error_code(errc::message_too_large) == std::errc::message_size);
    CHECK(std::error_code(errc::invalid_address) == std::errc::invalid_argument);
    CHECK(std::error_code(errc::invalid_argument) == std::errc::invalid_argument);
    CHECK(std::error_code(errc::protocol_error) == std::errc::protocol_error);
    // The exception's code() compares the same way, and still equals its own errc.
    netloop::error e(errc::timeout, "read 127.0.0.1:5000");
    CHECK(e.code() == std::errc::timed_out);
    CHECK(e.code() == errc::timeout);
}

TEST_CASE("errc values that stand for no single errno match no std::errc condition", "[error]") {
    // An orderly EOF is not an errno (read() returns 0); bind_failed and the like carry theirs in
    // sys_code().
    CHECK(std::error_code(errc::connection_closed) != std::errc::not_connected);
    CHECK(std::error_code(errc::connection_closed) != std::errc::broken_pipe);
    CHECK(std::error_code(errc::connection_closed) != std::errc::connection_reset);
    CHECK(std::error_code(errc::timeout) != std::errc::connection_reset);
    CHECK(std::error_code(errc::bind_failed) != std::errc::address_in_use);
    netloop::error e(errc::bind_failed, "bind 0.0.0.0:8080", EADDRINUSE);
    CHECK(e.sys_code() == std::errc::address_in_use);
    // The category's default condition of an unmapped errc stays in the netloop category.
    CHECK(std::error_code(errc::bind_failed).default_error_condition().category() ==
          netloop::error_category());
}
