// SPDX-License-Identifier: MIT
// One socket type for every transport: addresses to and from Asio's generic stream endpoints.
#pragma once

#include <asio/generic/stream_protocol.hpp>

#include <netloop/address.hpp>

namespace netloop::detail {

// TCP over IPv4/IPv6 and Unix domain stream sockets share one socket and acceptor type, so a
// connection and a server work the same over either.
using stream_socket = asio::generic::stream_protocol::socket;
using stream_acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

// The endpoint of `a`: a sockaddr_in/in6 with IPPROTO_TCP, or a sockaddr_un (abstract names
// without a trailing NUL, as Linux wants them).
asio::generic::stream_protocol::endpoint generic_endpoint(const address& a);

// The address of an endpoint the kernel reported (accept, getsockname, getpeername).
address from_generic(const asio::generic::stream_protocol::endpoint& ep);

// Exported: lib/proxy_protocol.hpp's inline proxy_unix_address (used by its test and fuzz
// target) calls it.
struct NETLOOP_API address_access {
    static address unix_named(const asio::generic::stream_protocol::endpoint& ep);
};

}  // namespace netloop::detail
