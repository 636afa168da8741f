// SPDX-License-Identifier: MIT
// The echo sample as a real process, and the README's echo server being samples/echo.cpp.
#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <netinet/in.h>
#include <sstream>
#include <sys/socket.h>
#include <unistd.h>

#include <netloop/netloop.hpp>

#include "support/bounded.hpp"
#include "support/catch.hpp"
#include "support/loopback.hpp"
#include "support/process.hpp"
#include "support/temp_file.hpp"

using namespace std::chrono_literals;
using netloop::test::child_process;
using netloop::test::run_bounded;

namespace {

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string source_dir() {
    const char* dir = std::getenv("NETLOOP_SOURCE_DIR");
    return dir != nullptr ? dir : ".";
}

// The first ```cpp block of a Markdown text.
std::string first_cpp_block(const std::string& md) {
    auto open = md.find("```cpp\n");
    if (open == std::string::npos) return {};
    open += 7;
    auto close = md.find("```", open);
    return md.substr(open, close - open);
}

}  // namespace

TEST_CASE("the README's echo server is samples/echo.cpp, character for character", "[samples]") {
    auto readme = first_cpp_block(slurp(source_dir() + "/README.md"));
    auto sample = slurp(source_dir() + "/samples/echo.cpp");
    REQUIRE_FALSE(sample.empty());
    CHECK(readme == sample);
}

TEST_CASE("echo as a real process: announces, echoes bytes, exits 0 on SIGTERM", "[samples]") {
    auto signo = GENERATE(SIGTERM, SIGINT);
    CAPTURE(signo);
    child_process echo({netloop::test::sample_path("echo"), "127.0.0.1:0"});
    auto port = echo.announced_port();
    REQUIRE(port != 0);
    CHECK(echo.announced().rfind("127.0.0.1:", 0) == 0);

    auto sent = netloop::test::pattern(256 * 1024, 9);
    auto received = run_bounded([&]() -> netloop::task<std::vector<std::byte>> {
        auto c = co_await netloop::connect(netloop::address::ipv4("127.0.0.1", port), 5s);
        netloop::spawn(
            [](netloop::connection& conn, std::span<const std::byte> b) -> netloop::task<> {
                co_await conn.write(b, 10s);
            }(c, sent));
        co_return co_await netloop::test::read_n(c, sent.size());
    });
    CHECK(received == sent);

    echo.signal(signo);
    CHECK(echo.exited_with(0, 10s));
}

TEST_CASE("echo exits 0 on SIGTERM even while a client sits idle", "[samples]") {
    child_process echo({netloop::test::sample_path("echo"), "127.0.0.1:0"});
    auto port = echo.announced_port();
    REQUIRE(port != 0);
    bool connected = run_bounded([&]() -> netloop::task<bool> {
        auto c = co_await netloop::connect(netloop::address::ipv4("127.0.0.1", port), 5s);
        co_await c.write(std::string_view("x"), 5s);
        auto back = co_await netloop::test::read_n(c, 1);
        echo.signal(SIGTERM);  // while this client is still connected and idle
        co_return back.size() == 1;
    });
    CHECK(connected);
    CHECK(echo.exited_with(0, 10s));
}

TEST_CASE("echo with a bad address exits non-zero with the error on stderr", "[samples]") {
    child_process echo({netloop::test::sample_path("echo"), "300.1.1.1:80"});
    auto status = echo.wait(10s);
    REQUIRE(status);
    CHECK(!(WIFEXITED(*status) && WEXITSTATUS(*status) == 0));
}

TEST_CASE("echo on a port already in use exits 1 with one line on stderr, never an abort",
          "[samples]") {
    // Hold a listening socket on 127.0.0.1:<some free port>, then start echo on that port.
    int held = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(held >= 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(held, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(held, 1) == 0);
    socklen_t len = sizeof sa;
    REQUIRE(::getsockname(held, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    auto at = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));

    netloop::test::temp_file err;
    child_process echo({netloop::test::sample_path("echo"), at}, {}, err.path());
    auto status = echo.wait(10s);
    ::close(held);
    REQUIRE(status);
    CHECK_FALSE(WIFSIGNALED(*status));
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 1);
    CHECK(err.contents() == "echo: bind " + at + ": " + std::strerror(EADDRINUSE) + "\n");
}
