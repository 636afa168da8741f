// SPDX-License-Identifier: MIT
// The state behind tls_context, and the handshake that turns a connection into a TLS one.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <netloop/config.hpp>
#include <netloop/tls.hpp>

#if NETLOOP_HAS_TLS
#include <asio/ssl.hpp>
#endif

#include "endpoint.hpp"
#include "tls_stream.hpp"

namespace netloop::detail {

#if NETLOOP_HAS_TLS

struct ticket_keys;  // a server's session ticket keys (tls.cpp)

struct tls_state {
    tls_state(asio::ssl::context::method method, bool server_side);

    asio::ssl::context context;
    bool server_side;
    bool verify_peer = true;
    std::string alpn_wire;  // the ALPN list in wire format: length-prefixed names
    // A server's ticket keys, shared by every loop (one SSL_CTX) and every SNI name.
    std::shared_ptr<ticket_keys> tickets;
    // A server's certificates by SNI name (lower case; "*.suffix" for a wildcard). Each is a
    // context of its own holding just the certificate: the servername callback moves the
    // handshake onto it, while trust, ALPN and tickets stay this context's.
    struct sni_entry {
        std::string name;
        std::shared_ptr<tls_state> state;
    };
    std::vector<sni_entry> sni;
};

#else

struct tls_state {};

#endif

// A listener's TLS context, replaceable while it serves (server::set_tls): copies share one
// slot, so the listener, its serve() and every loop of it see a replacement at once. Whether
// there is TLS at all is fixed when the slot is made; load() and store() are safe from any
// thread, and a handshake loads once, so it runs with one context from start to end. A mutex,
// not std::atomic<std::shared_ptr>: libstdc++ 12's lock-bit implementation is opaque to TSan,
// and one uncontended lock per handshake costs nothing beside the handshake.
class tls_slot {
public:
    tls_slot() noexcept = default;
    // Implicit: a listener's setup assigns the context it was given.
    tls_slot(std::shared_ptr<tls_state> settings)  // NOLINT(google-explicit-constructor)
        : current_(settings ? std::make_shared<cell>(std::move(settings)) : nullptr) {}

    [[nodiscard]] std::shared_ptr<tls_state> load() const {
        if (!current_) return nullptr;
        std::lock_guard lock(current_->mutex);
        return current_->settings;
    }
    void store(std::shared_ptr<tls_state> settings) noexcept {
        {
            std::lock_guard lock(current_->mutex);
            current_->settings.swap(settings);
        }
        // The old context, if this was its last user, is freed here, outside the lock.
    }
    explicit operator bool() const noexcept { return current_ != nullptr; }

private:
    struct cell {
        explicit cell(std::shared_ptr<tls_state> s) : settings(std::move(s)) {}
        std::mutex mutex;
        std::shared_ptr<tls_state> settings;
    };
    std::shared_ptr<cell> current_;
};

struct tls_access {
    static const std::shared_ptr<tls_state>& state(const tls_context& c) noexcept {
        return c.state_;
    }
    static void set(tls_context& c, std::shared_ptr<tls_state> s) noexcept {
        c.state_ = std::move(s);
    }
};

}  // namespace netloop::detail
