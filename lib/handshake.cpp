// SPDX-License-Identifier: MIT
// The TLS handshake that turns a connection into a TLS one, as a server or as a client.
#include <netloop/error.hpp>

#include "connection_impl.hpp"

#if NETLOOP_HAS_TLS
#include <openssl/ssl.h>
#endif

namespace netloop::detail {

task<> tls_handshake(std::shared_ptr<connection_impl> c, std::shared_ptr<tls_state> settings,
                     std::string server_name, duration timeout) {
#if NETLOOP_HAS_TLS
    bool server_side = settings->server_side;
    bool verify_peer = settings->verify_peer;
    auto& stream = c->stream.start_tls(std::move(settings));
    if (!server_side) {
        asio::error_code not_ip;
        (void)asio::ip::make_address(server_name, not_ip);
        if (!server_name.empty() && not_ip) {
            ::SSL_set_tlsext_host_name(stream.native_handle(), server_name.c_str());
        }
        if (verify_peer) {
            stream.set_verify_mode(asio::ssl::verify_peer);
            if (!server_name.empty()) {
                stream.set_verify_callback(asio::ssl::host_name_verification(server_name));
            }
        } else {
            stream.set_verify_mode(asio::ssl::verify_none);
        }
    } else if (verify_peer) {
        stream.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
    }
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    asio::error_code ec;
    {
        operation op(*c, c->reader, timeout, slot);
        auto [handshake_ec] = co_await stream.async_handshake(
            server_side ? asio::ssl::stream_base::server : asio::ssl::stream_base::client,
            op.token());
        ec = handshake_ec;
    }
    if (!ec) co_return;
    auto what = "TLS handshake " + c->remote.to_string();
    if (ec.category() == asio::error::get_ssl_category()) {
        throw error(errc::tls_failed, what + " (" + ec.message() + ")");
    }
    auto e = c->failure("read", ec, c->reader);
    throw error(e.kind(), what + (e.kind() == errc::connection_closed ? " (peer closed)" : ""),
                e.sys_errno());
#else
    (void)c;
    (void)settings;
    (void)server_name;
    (void)timeout;
    throw error(errc::invalid_argument, "TLS handshake (netloop was built without TLS)");
#endif
}

}  // namespace netloop::detail
