// SPDX-License-Identifier: MIT
// tls_context: TLS for servers and clients through OpenSSL, when netloop is built with it
// (NETLOOP_HAS_TLS).
#pragma once

#include <netloop/detail/config.hpp>

#include <chrono>
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

/// The TLS settings of a server or a client: certificate and key (one per SNI server name if
/// wanted), trusted CAs, verification, ALPN, session resumption. TLS 1.2 and 1.3 only, with
/// forward-secret AEAD ciphers for TLS 1.2.
///
/// A value handle: copies share one context, which lives as long as any copy, server or
/// connection uses it. A default-constructed `tls_context` is "no TLS". Set it up before use;
/// afterwards it is read-only and may be shared by every loop. A server takes a new one while
/// it runs with `server::set_tls()` (a certificate renewal).
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

    /// Serves clients that ask for `server_name` (TLS SNI) with this certificate chain (leaf
    /// first) and private key, PEM files, instead of the default one given to `server()`. A name
    /// is exact (`api.example.com`) or a wildcard of one leading label (`*.example.com` matches
    /// `a.example.com`, neither `example.com` nor `a.b.example.com`); matching ignores case, an
    /// exact name wins over a wildcard, and adding a name again replaces its certificate. A
    /// client that sends no name, or one not added, gets the default certificate. Every name
    /// shares the context's other settings: trusted CAs, verification, ALPN, session tickets.
    ///
    /// Throws `error` with `errc::invalid_argument` for a client context or a malformed name,
    /// and with `errc::tls_failed` as `server()` for a bad file or a key that does not match.
    void add_sni(std::string_view server_name, const std::string& cert_chain_file,
                 const std::string& private_key_file);

    /// The same from PEM text in memory.
    void add_sni_pem(std::string_view server_name, std::string_view cert_chain_pem,
                     std::string_view private_key_pem);

    /// Session resumption for a server (on by default): a returning client skips the
    /// certificate and key exchange (TLS 1.3 session tickets; TLS 1.2 tickets and session IDs).
    /// The tickets are encrypted with keys made at random in this process, shared by every loop
    /// and every SNI name, replaced every `set_session_ticket_rotation()`; the key before the
    /// current one still decrypts, and a ticket is good for one rotation period. False turns
    /// resumption off: every handshake is a full one. Throws `errc::invalid_argument` for a
    /// client context.
    void set_session_resumption(bool on);

    /// How often a server makes a new session ticket key (default: 1 hour, at least 1 s), which
    /// is also how long a ticket may be used. Throws `errc::invalid_argument` for a client
    /// context or a period under 1 s.
    void set_session_ticket_rotation(std::chrono::seconds every);

    /// Uses `other`'s session ticket keys (both server contexts): a ticket issued under one
    /// resumes under the other. For a certificate reload: the new context shares the old one's
    /// keys, so that clients resume across `server::set_tls()`. Throws `errc::invalid_argument`
    /// unless both are server contexts.
    void share_session_tickets(const tls_context& other);

    /// True unless default-constructed.
    explicit operator bool() const noexcept { return state_ != nullptr; }

private:
    friend struct detail::tls_access;
    std::shared_ptr<detail::tls_state> state_;
};

}  // namespace netloop
