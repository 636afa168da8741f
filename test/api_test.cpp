// SPDX-License-Identifier: MIT
// The public API's type promises, checked at compile time: no public signature takes a detail
// type. Today's violation makes this file fail to compile.
#include <memory>
#include <type_traits>

#include <netloop/netloop.hpp>

#include "support/catch.hpp"

// Only netloop makes connections (accept, connect): the constructor from its internal state is
// not public API.
static_assert(!std::is_constructible_v<netloop::connection,
                                       std::shared_ptr<netloop::detail::connection_impl>>);
static_assert(
    !std::is_convertible_v<std::shared_ptr<netloop::detail::connection_impl>, netloop::connection>);
// What a connection is for users: moved, not copied.
static_assert(std::is_nothrow_move_constructible_v<netloop::connection>);
static_assert(!std::is_copy_constructible_v<netloop::connection>);

TEST_CASE("a connection cannot be made from netloop's internal state", "[api]") {
    SUCCEED("checked by the static_asserts at the top of this file");
}
