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
    auto* ssl = stream.native_handle();
    if (!server_side) {
        asio::error_code not_ip;
        auto ip = asio::ip::make_address(server_name, not_ip);
        if (!server_name.empty() && not_ip) {
            ::SSL_set_tlsext_host_name(ssl, server_name.c_str());
        }
        if (verify_peer) {
            ::SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
            // The certificate must name the host (DNS name, wildcards as RFC 6125) or the IP
            // address asked for; OpenSSL checks it with the chain.
            if (!server_name.empty()) {
                bool named = not_ip ? ::SSL_set1_host(ssl, server_name.c_str()) == 1
                                    : ::X509_VERIFY_PARAM_set1_ip_asc(::SSL_get0_param(ssl),
                                                                      ip.to_string().c_str()) == 1;
                if (!named) throw error(errc::tls_failed, "TLS handshake (bad host name)");
            }
        } else {
            ::SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);
        }
    } else if (verify_peer) {
        ::SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    asio::error_code ec;
    {
        operation op(*c, c->reader, timeout, slot);
        auto [handshake_ec] = co_await stream.async_handshake(
            server_side ? tls_stream::server : tls_stream::client, op.token());
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
