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
         v <= static_cast<int>(errc::tls_failed); ++v) {
        CAPTURE(v);
        CHECK(netloop::error_category().message(v) != "unknown netloop error");
    }
}
