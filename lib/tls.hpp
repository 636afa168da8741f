// SPDX-License-Identifier: MIT
// The state behind tls_context, and the handshake that turns a connection into a TLS one.
#pragma once

#include <memory>
#include <string>

#include <netloop/config.hpp>
#include <netloop/tls.hpp>

#if NETLOOP_HAS_TLS
#include <asio/ssl.hpp>
#endif

#include "endpoint.hpp"

namespace netloop::detail {

#if NETLOOP_HAS_TLS

struct tls_state {
    tls_state(asio::ssl::context::method method, bool server_side);

    asio::ssl::context context;
    bool server_side;
    bool verify_peer = true;
    std::string alpn_wire;  // the ALPN list in wire format: length-prefixed names
};

using tls_stream = asio::ssl::stream<stream_socket&>;

#else

struct tls_state {};

#endif

struct tls_access {
    static const std::shared_ptr<tls_state>& state(const tls_context& c) noexcept {
        return c.state_;
    }
};

}  // namespace netloop::detail
