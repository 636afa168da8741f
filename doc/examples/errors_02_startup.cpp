// SPDX-License-Identifier: MIT
// Errors: what a failed listen() says, and how to test for it.
#include <cerrno>
#include <cstdio>
#include <system_error>

#include <netloop/netloop.hpp>

int main() {
    return netloop::run([]() -> netloop::task<int> {
        auto first = netloop::server::listen(netloop::address::parse("127.0.0.1:0"));
        try {
            auto second = netloop::server::listen(first.local_address());  // the same port
        } catch (const netloop::error& e) {
            // e.what() is "bind 127.0.0.1:40123: Address already in use"
            bool taken = e.kind() == netloop::errc::bind_failed && e.sys_errno() == EADDRINUSE;
            // The same test through std::error_code, as with any system_error:
            bool same =
                e.code() == netloop::errc::bind_failed && e.sys_code() == std::errc::address_in_use;
            std::printf("%s\n", e.what());
            co_return taken&& same ? 0 : 1;
        }
        co_return 1;  // the second listen() should have failed
    });
}
