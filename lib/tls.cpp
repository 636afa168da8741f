// SPDX-License-Identifier: MIT
// tls_context: OpenSSL contexts with safe defaults, certificates, trust, ALPN.
#include "tls.hpp"

#include <netloop/error.hpp>
#include <netloop/tls.hpp>

#if NETLOOP_HAS_TLS
#include <openssl/ssl.h>
#endif

namespace netloop {

#if NETLOOP_HAS_TLS

namespace detail {
namespace {

// TLS 1.2's forward-secret AEAD suites (TLS 1.3's are all of that kind already).
constexpr const char* tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

[[noreturn]] void fail(const std::string& what, const asio::error_code& ec) {
    throw error(errc::tls_failed, what + " (" + ec.message() + ")");
}

// The server's ALPN choice: the first of its own protocols that the client offers.
int select_alpn(SSL*, const unsigned char** out, unsigned char* out_length,
                const unsigned char* offered, unsigned int offered_length, void* arg) {
    const auto* state = static_cast<const tls_state*>(arg);
    const auto* ours = reinterpret_cast<const unsigned char*>(state->alpn_wire.data());
    auto ours_length = static_cast<unsigned int>(state->alpn_wire.size());
    for (unsigned int i = 0; i < ours_length; i += 1U + ours[i]) {
        for (unsigned int j = 0; j < offered_length; j += 1U + offered[j]) {
            if (ours[i] == offered[j] && j + 1U + offered[j] <= offered_length &&
                std::equal(ours + i + 1, ours + i + 1 + ours[i], offered + j + 1)) {
                *out = offered + j + 1;
                *out_length = offered[j];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_NOACK;  // no common protocol: go on without ALPN
}

void check_key_matches(tls_state& s, const std::string& what) {
    if (::SSL_CTX_check_private_key(s.context.native_handle()) != 1) {
        throw error(errc::tls_failed, what + " (does not match the certificate)");
    }
}

tls_state& usable(const std::shared_ptr<tls_state>& state, const char* what) {
    if (!state) throw error(errc::invalid_argument, std::string(what) + " (empty tls_context)");
    return *state;
}

}  // namespace

tls_state::tls_state(asio::ssl::context::method method, bool server)
    : context(method), server_side(server), verify_peer(!server) {
    auto* ctx = context.native_handle();
    ::SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    context.set_options(asio::ssl::context::default_workarounds |
                        asio::ssl::context::no_compression);
    ::SSL_CTX_set_cipher_list(ctx, tls12_ciphers);
    if (server) ::SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    // An idle TLS connection gives its record buffers back.
    ::SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

}  // namespace detail

tls_context tls_context::server(const std::string& cert_chain_file,
                                const std::string& private_key_file) {
    tls_context c;
    c.state_ = std::make_shared<detail::tls_state>(asio::ssl::context::tls_server, true);
    c.use_certificate(cert_chain_file, private_key_file);
    return c;
}

tls_context tls_context::server_from_pem(std::string_view cert_chain_pem,
                                         std::string_view private_key_pem) {
    tls_context c;
    c.state_ = std::make_shared<detail::tls_state>(asio::ssl::context::tls_server, true);
    c.use_certificate_pem(cert_chain_pem, private_key_pem);
    return c;
}

void tls_context::use_certificate(const std::string& cert_chain_file,
                                  const std::string& private_key_file) {
    auto& s = detail::usable(state_, "use_certificate");
    asio::error_code ec;
    s.context.use_certificate_chain_file(cert_chain_file, ec);
    if (ec) detail::fail("TLS certificate " + cert_chain_file, ec);
    s.context.use_private_key_file(private_key_file, asio::ssl::context::pem, ec);
    if (ec) detail::fail("TLS private key " + private_key_file, ec);
    detail::check_key_matches(s, "TLS private key " + private_key_file);
}

void tls_context::use_certificate_pem(std::string_view cert_chain_pem,
                                      std::string_view private_key_pem) {
    auto& s = detail::usable(state_, "use_certificate_pem");
    asio::error_code ec;
    s.context.use_certificate_chain(asio::buffer(cert_chain_pem.data(), cert_chain_pem.size()), ec);
    if (ec) detail::fail("TLS certificate (PEM)", ec);
    s.context.use_private_key(asio::buffer(private_key_pem.data(), private_key_pem.size()),
                              asio::ssl::context::pem, ec);
    if (ec) detail::fail("TLS private key (PEM)", ec);
    detail::check_key_matches(s, "TLS private key (PEM)");
}

tls_context tls_context::client() {
    tls_context c;
    c.state_ = std::make_shared<detail::tls_state>(asio::ssl::context::tls_client, false);
    asio::error_code ec;
    c.state_->context.set_default_verify_paths(ec);  // no system store: trust() must add one
    return c;
}

void tls_context::trust(const std::string& ca_file) {
    auto& s = detail::usable(state_, "trust");
    asio::error_code ec;
    s.context.load_verify_file(ca_file, ec);
    if (ec) detail::fail("TLS trusted CAs " + ca_file, ec);
}

void tls_context::trust_pem(std::string_view ca_pem) {
    auto& s = detail::usable(state_, "trust_pem");
    asio::error_code ec;
    s.context.add_certificate_authority(asio::buffer(ca_pem.data(), ca_pem.size()), ec);
    if (ec) detail::fail("TLS trusted CAs (PEM)", ec);
}

void tls_context::set_verify_peer(bool on) {
    detail::usable(state_, "set_verify_peer").verify_peer = on;
}

void tls_context::set_alpn(std::vector<std::string> protocols) {
    auto& s = detail::usable(state_, "set_alpn");
    std::string wire;
    for (const auto& p : protocols) {
        if (p.empty() || p.size() > 255) {
            throw error(errc::invalid_argument, "set_alpn (a protocol name of 1 to 255 bytes)");
        }
        wire += static_cast<char>(p.size());
        wire += p;
    }
    s.alpn_wire = std::move(wire);
    auto* ctx = s.context.native_handle();
    if (s.server_side) {
        ::SSL_CTX_set_alpn_select_cb(ctx, detail::select_alpn, &s);
    } else if (::SSL_CTX_set_alpn_protos(ctx,
                                         reinterpret_cast<const unsigned char*>(s.alpn_wire.data()),
                                         static_cast<unsigned int>(s.alpn_wire.size())) != 0) {
        throw error(errc::tls_failed, "set_alpn");
    }
}

#else

namespace {
[[noreturn]] void unavailable(const char* what) {
    throw error(errc::invalid_argument, std::string(what) + " (netloop was built without TLS)");
}
}  // namespace

tls_context tls_context::server(const std::string&, const std::string&) {
    unavailable("tls_context::server");
}
tls_context tls_context::server_from_pem(std::string_view, std::string_view) {
    unavailable("tls_context::server_from_pem");
}
tls_context tls_context::client() { unavailable("tls_context::client"); }
void tls_context::trust(const std::string&) { unavailable("trust"); }
void tls_context::trust_pem(std::string_view) { unavailable("trust_pem"); }
void tls_context::set_verify_peer(bool) { unavailable("set_verify_peer"); }
void tls_context::set_alpn(std::vector<std::string>) { unavailable("set_alpn"); }
void tls_context::use_certificate(const std::string&, const std::string&) {
    unavailable("use_certificate");
}
void tls_context::use_certificate_pem(std::string_view, std::string_view) {
    unavailable("use_certificate_pem");
}

#endif

}  // namespace netloop
