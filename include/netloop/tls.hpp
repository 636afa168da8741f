// SPDX-License-Identifier: MIT
// tls_context: TLS for servers and clients through asio::ssl (OpenSSL), when netloop is built
// with it (NETLOOP_HAS_TLS).
#pragma once

#include <netloop/detail/config.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <netloop/config.hpp>
#include <netloop/export.hpp>

namespace netloop {

namespace detail {
struct tls_state;
struct tls_access;
}  // namespace detail

/// The TLS settings of a server or a client: certificate and key, trusted CAs, verification,
/// ALPN. TLS 1.2 and 1.3 only, with forward-secret AEAD ciphers for TLS 1.2.
///
/// A value handle: copies share one context, which lives as long as any copy, server or
/// connection uses it. A default-constructed `tls_context` is "no TLS". Set it up before use;
/// afterwards it is read-only and may be shared by every loop.
///
/// When netloop is built without TLS (`NETLOOP_HAS_TLS` is 0), every factory throws `error`
/// with `errc::invalid_argument`.
class NETLOOP_API tls_context {
public:
    /// No TLS.
    tls_context() noexcept = default;

    /// A server context from PEM files: the certificate chain (leaf first) and its private key.
    ///
    /// Throws `error` with `errc::tls_failed` if a file cannot be read, is not PEM, or the key
    /// does not match the certificate.
    [[nodiscard]] static tls_context server(const std::string& cert_chain_file,
                                            const std::string& private_key_file);

    /// A server context from PEM text in memory. Throws as `server()`.
    [[nodiscard]] static tls_context server_from_pem(std::string_view cert_chain_pem,
                                                     std::string_view private_key_pem);

    /// A client context that verifies the server's certificate chain against the system's
    /// trusted CAs and its name (the host name given to `connect`, or the IP address). Turn
    /// verification off only explicitly, with `set_verify_peer(false)`.
    [[nodiscard]] static tls_context client();

    /// Trusts the CA certificates in a PEM file (for a client: besides the system's).
    /// Throws `error` with `errc::tls_failed`.
    void trust(const std::string& ca_file);

    /// Trusts the CA certificates in PEM text. Throws `error` with `errc::tls_failed`.
    void trust_pem(std::string_view ca_pem);

    /// A client verifies the server's certificate unless this is set to false (on by default).
    /// A server with it set to true asks each client for a certificate and refuses a client
    /// without one that verifies against the CAs of `trust()` (mutual TLS; off by default).
    void set_verify_peer(bool on);

    /// Presents this certificate chain (leaf first) and private key, PEM files: for a client, its
    /// certificate for mutual TLS. Throws `error` with `errc::tls_failed` as `server()`.
    void use_certificate(const std::string& cert_chain_file, const std::string& private_key_file);

    /// The same from PEM text in memory.
    void use_certificate_pem(std::string_view cert_chain_pem, std::string_view private_key_pem);

    /// ALPN protocols (e.g. `{"h2", "http/1.1"}`): a client offers them in this order; a server
    /// picks the first of its own list that the client offers, and refuses none.
    /// `connection::tls_alpn()` tells what was agreed.
    void set_alpn(std::vector<std::string> protocols);

    /// True unless default-constructed.
    explicit operator bool() const noexcept { return state_ != nullptr; }

private:
    friend struct detail::tls_access;
    std::shared_ptr<detail::tls_state> state_;
};

}  // namespace netloop
