// SPDX-License-Identifier: MIT
// tls_context: OpenSSL contexts with safe defaults, certificates, SNI, trust, ALPN, session
// tickets.
#include "tls.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>

#include <netloop/error.hpp>
#include <netloop/tls.hpp>

#if NETLOOP_HAS_TLS
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
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

tls_state& server_side(const std::shared_ptr<tls_state>& state, const char* what) {
    auto& s = usable(state, what);
    if (!s.server_side) {
        throw error(errc::invalid_argument, std::string(what) + " (needs a tls_context::server())");
    }
    return s;
}

// The SSL_CTX ex_data slot that points to the tls_state whose tickets a handshake uses (the
// one it began with, also after SNI moved it onto a name's own context).
int ticket_owner_index() {
    static const int index = ::SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

}  // namespace

// Session ticket keys: AES-256-CBC and HMAC-SHA256 (the format of OpenSSL's own tickets),
// named by 16 random bytes. The current key encrypts; it and the one before decrypt. Rotation
// happens when a handshake finds the current key older than `rotation`, so no timer runs.
struct ticket_keys {
    using clock = std::chrono::steady_clock;
    struct key {
        std::array<unsigned char, 16> name{};
        std::array<unsigned char, 32> aes{};
        std::array<unsigned char, 32> hmac{};
        clock::time_point made;
    };

    std::mutex mutex;
    std::chrono::seconds rotation{3600};
    std::deque<key> keys;  // newest first, at most two

    // The key to encrypt with now, rotated if due. False if no random bytes could be had.
    bool current(key& out) {
        std::lock_guard lock(mutex);
        if (!rotate(clock::now())) return false;
        out = keys.front();
        return true;
    }

    // The key named `name`, if it is still good; `is_current` tells whether it is the newest.
    bool find(const unsigned char* name, key& out, bool& is_current) {
        std::lock_guard lock(mutex);
        if (!rotate(clock::now())) return false;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            if (std::memcmp(keys[i].name.data(), name, keys[i].name.size()) == 0) {
                out = keys[i];
                is_current = i == 0;
                return true;
            }
        }
        return false;
    }

private:
    bool rotate(clock::time_point now) {
        if (!keys.empty() && now - keys.front().made < rotation) return true;
        // Idle for two periods: even the previous key's tickets have expired.
        if (!keys.empty() && now - keys.front().made >= 2 * rotation) keys.clear();
        key k;
        k.made = now;
        if (::RAND_bytes(k.name.data(), static_cast<int>(k.name.size())) != 1 ||
            ::RAND_bytes(k.aes.data(), static_cast<int>(k.aes.size())) != 1 ||
            ::RAND_bytes(k.hmac.data(), static_cast<int>(k.hmac.size())) != 1) {
            return !keys.empty();
        }
        keys.push_front(k);
        while (keys.size() > 2) keys.pop_back();
        return true;
    }
};

namespace {

// OpenSSL's ticket key callback: 1 = key set up, 2 = decrypted with an older key (issue a new
// ticket), 0 = unknown key (a full handshake), -1 = failure.
int ticket_key(SSL* ssl, unsigned char* name, unsigned char* iv, EVP_CIPHER_CTX* cipher,
               EVP_MAC_CTX* mac, int encrypt) {
    auto* owner = static_cast<tls_state*>(
        ::SSL_CTX_get_ex_data(::SSL_get_SSL_CTX(ssl), ticket_owner_index()));
    if (owner == nullptr || !owner->tickets) return encrypt != 0 ? -1 : 0;
    ticket_keys::key k;
    bool is_current = true;
    if (encrypt != 0) {
        if (!owner->tickets->current(k)) return -1;
        std::memcpy(name, k.name.data(), k.name.size());
        if (::RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1) return -1;
    } else if (!owner->tickets->find(name, k, is_current)) {
        return 0;
    }
    if (::EVP_CipherInit_ex(cipher, EVP_aes_256_cbc(), nullptr, k.aes.data(), iv, encrypt) != 1) {
        return -1;
    }
    char digest[] = "SHA256";
    std::array<OSSL_PARAM, 3> params{
        ::OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac.data(), k.hmac.size()),
        ::OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        ::OSSL_PARAM_construct_end()};
    if (::EVP_MAC_CTX_set_params(mac, params.data()) != 1) return -1;
    return is_current ? 1 : 2;
}

// Where a server's ticket callback finds the keys: `owner`'s, for `ctx` and each SNI context.
void use_tickets_of(tls_state& owner, SSL_CTX* ctx) {
    ::SSL_CTX_set_ex_data(ctx, ticket_owner_index(), &owner);
    ::SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key);
}

// A server name as SNI sends it: lower case; a wildcard only as a whole leading label.
std::string normalized_name(std::string_view name, bool pattern) {
    std::string out(name);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    if (!out.empty() && out.back() == '.') out.pop_back();
    auto bad = [&] {
        throw error(errc::invalid_argument,
                    "add_sni (a host name or *.domain, not '" + std::string(name) + "')");
    };
    if (!pattern) return out;
    if (out.empty() || out.size() > 253) bad();
    std::string_view rest = out;
    if (rest.starts_with("*.")) rest.remove_prefix(2);
    if (rest.empty() || rest.front() == '.' || rest.find("..") != std::string_view::npos) bad();
    for (char ch : rest) {
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.')) bad();
    }
    return out;
}

const tls_state* find_sni(const tls_state& s, std::string_view name) {
    for (const auto& e : s.sni) {
        if (e.name == name) return e.state.get();
    }
    auto dot = name.find('.');
    if (dot == 0 || dot == std::string_view::npos) return nullptr;
    // A wildcard `*.example.com` for `a.example.com`: compared in place, no string built.
    auto suffix = name.substr(dot);
    for (const auto& e : s.sni) {
        std::string_view pattern = e.name;
        if (pattern.size() == suffix.size() + 1 && pattern.front() == '*' &&
            pattern.substr(1) == suffix) {
            return e.state.get();
        }
    }
    return nullptr;
}

// The servername callback: moves the handshake onto the certificate of the name asked for. An
// unknown name, or none, keeps the default certificate (no alert: the client decides).
int select_certificate(SSL* ssl, int*, void* arg) {
    const auto* state = static_cast<const tls_state*>(arg);
    const char* asked = ::SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (asked == nullptr) return SSL_TLSEXT_ERR_NOACK;
    const auto* chosen = find_sni(*state, normalized_name(asked, false));
    if (chosen == nullptr) return SSL_TLSEXT_ERR_NOACK;
    if (::SSL_set_SSL_CTX(ssl, const_cast<asio::ssl::context&>(chosen->context).native_handle()) ==
        nullptr) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

constexpr unsigned char session_id_context[] = "netloop";

}  // namespace

tls_state::tls_state(asio::ssl::context::method method, bool server)
    : context(method), server_side(server), verify_peer(!server) {
    auto* ctx = context.native_handle();
    ::SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    context.set_options(asio::ssl::context::default_workarounds |
                        asio::ssl::context::no_compression);
    ::SSL_CTX_set_cipher_list(ctx, tls12_ciphers);
    if (server) {
        ::SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
        // Resumption: without a session ID context a server that verifies clients refuses to
        // resume; the tickets' keys are ours, so that they rotate and can be shared.
        ::SSL_CTX_set_session_id_context(ctx, session_id_context, sizeof session_id_context - 1);
        tickets = std::make_shared<ticket_keys>();
        ::SSL_CTX_set_timeout(ctx, static_cast<long>(tickets->rotation.count()));
        use_tickets_of(*this, ctx);
    }
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

namespace {

void add_sni_context(tls_context& c, std::string_view server_name,
                     const std::function<void(tls_context&)>& load) {
    auto& s = detail::server_side(detail::tls_access::state(c), "add_sni");
    auto name = detail::normalized_name(server_name, true);
    tls_context named;
    detail::tls_access::set(
        named, std::make_shared<detail::tls_state>(asio::ssl::context::tls_server, true));
    load(named);
    auto state = detail::tls_access::state(named);
    auto* ctx = state->context.native_handle();
    // What the handshake still reads from the context it moved to: the trusted CAs (shared),
    // ALPN (the default context's list), and where the ticket keys are.
    ::SSL_CTX_set1_cert_store(ctx, ::SSL_CTX_get_cert_store(s.context.native_handle()));
    ::SSL_CTX_set_alpn_select_cb(ctx, detail::select_alpn, &s);
    detail::use_tickets_of(s, ctx);
    state->tickets = nullptr;
    ::SSL_CTX_set_tlsext_servername_callback(s.context.native_handle(), detail::select_certificate);
    ::SSL_CTX_set_tlsext_servername_arg(s.context.native_handle(), &s);
    for (auto& e : s.sni) {
        if (e.name == name) {
            e.state = std::move(state);
            return;
        }
    }
    s.sni.push_back({std::move(name), std::move(state)});
}

}  // namespace

void tls_context::add_sni(std::string_view server_name, const std::string& cert_chain_file,
                          const std::string& private_key_file) {
    add_sni_context(*this, server_name, [&](tls_context& named) {
        named.use_certificate(cert_chain_file, private_key_file);
    });
}

void tls_context::add_sni_pem(std::string_view server_name, std::string_view cert_chain_pem,
                              std::string_view private_key_pem) {
    add_sni_context(*this, server_name, [&](tls_context& named) {
        named.use_certificate_pem(cert_chain_pem, private_key_pem);
    });
}

void tls_context::set_session_resumption(bool on) {
    auto& s = detail::server_side(state_, "set_session_resumption");
    auto* ctx = s.context.native_handle();
    if (on) {
        ::SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
        ::SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        ::SSL_CTX_set_num_tickets(ctx, 2);
    } else {
        ::SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        ::SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        ::SSL_CTX_set_num_tickets(ctx, 0);
    }
}

void tls_context::set_session_ticket_rotation(std::chrono::seconds every) {
    auto& s = detail::server_side(state_, "set_session_ticket_rotation");
    if (every < std::chrono::seconds(1)) {
        throw error(errc::invalid_argument, "set_session_ticket_rotation (at least 1 s)");
    }
    {
        std::lock_guard lock(s.tickets->mutex);
        s.tickets->rotation = every;
    }
    ::SSL_CTX_set_timeout(s.context.native_handle(), static_cast<long>(every.count()));
}

void tls_context::share_session_tickets(const tls_context& other) {
    auto& s = detail::server_side(state_, "share_session_tickets");
    auto& o = detail::server_side(other.state_, "share_session_tickets");
    s.tickets = o.tickets;
    ::SSL_CTX_set_timeout(s.context.native_handle(),
                          ::SSL_CTX_get_timeout(o.context.native_handle()));
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
void tls_context::add_sni(std::string_view, const std::string&, const std::string&) {
    unavailable("add_sni");
}
void tls_context::add_sni_pem(std::string_view, std::string_view, std::string_view) {
    unavailable("add_sni_pem");
}
void tls_context::set_session_resumption(bool) { unavailable("set_session_resumption"); }
void tls_context::set_session_ticket_rotation(std::chrono::seconds) {
    unavailable("set_session_ticket_rotation");
}
void tls_context::share_session_tickets(const tls_context&) {
    unavailable("share_session_tickets");
}

#endif

}  // namespace netloop
