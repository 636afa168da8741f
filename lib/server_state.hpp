// SPDX-License-Identifier: MIT
// The state behind a server: the acceptor, its counters, and how it closes from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

#include <netloop/address.hpp>
#include <netloop/loop.hpp>
#include <netloop/server.hpp>

#include "connection_impl.hpp"
#include "endpoint.hpp"

namespace netloop::detail {

struct preparer;

// A listener's PROXY protocol settings (listen_options::proxy_protocol and friends).
struct proxy_settings {
    proxy_protocol mode = proxy_protocol::off;
    std::vector<network> from;
    duration timeout = std::chrono::seconds(5);
};

// An accepted socket and its peer's address, as accept() reported it.
struct accepted {
    stream_socket socket;
    address peer;
};

struct server_state : std::enable_shared_from_this<server_state> {
    server_state(loop& l, stream_acceptor a);

    loop& owner;
    stream_acceptor acceptor;
    // The listening descriptor, fixed at construction: close() from another thread shuts it
    // down without touching the acceptor object, which belongs to the loop's thread.
    const int listen_fd;
    address local;
    std::atomic<bool> closed{false};
    int backlog = 128;
    bool reuse_port = false;
    bool v6_only = true;
    tls_slot tls;  // a server context: connections are TLS; server::set_tls replaces it
    duration handshake_timeout = std::chrono::seconds(10);
    proxy_settings proxy;  // a PROXY header before anything else
    std::shared_ptr<server_counters> counters = std::make_shared<server_counters>();
    // listen_options::max_preparing, and the connections accepted whose preparation (PROXY
    // header, TLS handshake) is under way, under next() and serve() alike. Changed by the
    // listener's loop and, for a hand_off serve(), by the loops its connections went to.
    std::size_t max_preparing = 256;
    std::atomic<std::size_t> preparing{0};
    // PROXY header or TLS under next(): the accept pump, the prepared connections, the waiters.
    std::shared_ptr<preparer> prepared;

    // Accept back-off after EMFILE and friends: the current delay (zero when healthy).
    std::chrono::milliseconds backoff{0};
    // Timers that tasks wait on for this server (a next() backing off, a serve() paused at
    // its limit): close() cancels them, so the waiters see the close at once.
    std::list<asio::steady_timer*> wake_on_close;
    // Timers of tasks paused at max_preparing (next()'s pump, a serve() accept loop): cancelled,
    // on this loop, whenever a preparation ends.
    std::list<asio::steady_timer*> wake_on_prepared;

    // A PROXY header or a TLS handshake comes before a connection is handed over.
    [[nodiscard]] bool needs_preparing() const noexcept {
        return tls || proxy.mode != proxy_protocol::off;
    }
    // A preparation of this listener's ended: wakes the tasks paused at the bound. Any thread.
    void end_preparing() noexcept;

    // Closes on the calling thread if it runs the loop. From any other thread it stops the
    // listening at once (shutdown(SHUT_RD): new connects are refused, a pending accept wakes)
    // and posts the close of the acceptor to the loop, which alone touches the acceptor.
    void close() noexcept;

    // A Unix socket file this server bound: removed on close(), unless handed to a successor.
    void own_socket_file(const std::string& path);
    void keep_socket_file() noexcept { remove_socket_file_ = false; }

    // reuse_port listeners that serve() opened on other loops for this server: closed with it.
    void link(std::shared_ptr<server_state> other);
    // Counters of the other loops serving this server; stats() adds them up.
    void add_counters(std::shared_ptr<server_counters> c);
    [[nodiscard]] std::vector<std::shared_ptr<server_counters>> all_counters() const;

private:
    void close_here() noexcept;
    void remove_socket_file() noexcept;
    std::string socket_file_;
    std::pair<dev_t, ino_t> socket_file_id_{};
    std::atomic<bool> remove_socket_file_{false};
    mutable std::mutex linked_mutex_;
    std::vector<std::shared_ptr<server_state>> linked_;
    std::vector<std::shared_ptr<server_counters>> extra_counters_;
};

// One connection's place in its listener's max_preparing, taken at accept (the count goes up
// at once) and given back when its preparation ends, however it ends. Move-only.
class preparing_slot {
public:
    preparing_slot() noexcept = default;
    explicit preparing_slot(std::shared_ptr<server_state> listener) noexcept
        : listener_(std::move(listener)) {
        if (listener_) listener_->preparing.fetch_add(1, std::memory_order_relaxed);
    }
    preparing_slot(preparing_slot&& other) noexcept = default;
    preparing_slot& operator=(preparing_slot&& other) noexcept {
        if (this != &other) {
            release();
            listener_ = std::move(other.listener_);
        }
        return *this;
    }
    preparing_slot(const preparing_slot&) = delete;
    preparing_slot& operator=(const preparing_slot&) = delete;
    ~preparing_slot() { release(); }

    void release() noexcept {
        if (auto l = std::move(listener_)) l->end_preparing();
    }

private:
    std::shared_ptr<server_state> listener_;
};

// Keeps `timer` in one of a server's wake lists while alive (the frame that waits on it may be
// destroyed without resuming, when its loop goes away).
class listed_timer {
public:
    listed_timer(std::list<asio::steady_timer*>& list, asio::steady_timer& timer)
        : list_(list), entry_(list.insert(list.end(), &timer)) {}
    ~listed_timer() { list_.erase(entry_); }
    listed_timer(const listed_timer&) = delete;
    listed_timer& operator=(const listed_timer&) = delete;

private:
    std::list<asio::steady_timer*>& list_;
    std::list<asio::steady_timer*>::iterator entry_;
};

// True while `state`'s preparations are at its max_preparing: accepting pauses.
[[nodiscard]] inline bool at_preparing_bound(const server_state& state) noexcept {
    return state.preparing.load(std::memory_order_relaxed) >= state.max_preparing;
}

// accept.cpp: at close(), on the loop: wakes every next() waiting on a TLS or PROXY listener
// (they yield nullopt), stops the accept pump, and closes the prepared connections nobody took.
void close_prepared(server_state& state) noexcept;

struct server_access {
    static server make(std::shared_ptr<server_state> state) { return server(std::move(state)); }
    static server_state& state(const server& s) noexcept { return *s.state_; }
};

// The server side of `tls` (null without TLS); throws invalid_argument for a client context.
std::shared_ptr<tls_state> server_tls(const tls_context& tls, const address& at);

// Makes a listening socket: non-blocking, SO_REUSEADDR (and SO_REUSEPORT if asked), bound.
std::shared_ptr<server_state> open_listener(const address& at, const listen_options& options,
                                            loop& l);

// Accepts the next connection into a socket of `into` (another loop's io_context, for a
// hand-off), backing off on EMFILE and the like; nullopt once closed or cancelled. The one accept
// path of next() and serve().
task<std::optional<accepted>> accept_next(std::shared_ptr<server_state> state,
                                          asio::io_context& into);

// Logs (at error) that `s` dropped a connection it accepted, for `e` (out of memory).
void log_dropped(const server_state& s, const std::exception& e) noexcept;

// The connection of an accepted socket, on `l` (the loop the socket belongs to).
std::shared_ptr<connection_impl> make_connection(loop& l, accepted a,
                                                 std::shared_ptr<server_counters> counters);

// What a listener does to an accepted connection before anyone sees it (proxy_accept.cpp): the
// PROXY header (its source trusted, read byte-exactly, bounded by `proxy.timeout`), then the TLS
// handshake. True if the connection is ready; false, logged and counted (`proxy_failures`,
// `handshake_failures`), if it is to be closed. Cancellation throws.
[[nodiscard]] task<bool> prepare_or_count(std::shared_ptr<connection_impl> c,
                                          const proxy_settings& proxy,
                                          std::shared_ptr<tls_state> tls,
                                          duration handshake_timeout, server_counters& counters);

}  // namespace netloop::detail
