// SPDX-License-Identifier: MIT
// chat: a line-based chat room; every line a client sends goes to all the others.
//
//   chat [host:port] [--threads N]     default 127.0.0.1:7000; try `nc 127.0.0.1 7000`
//
// A line reaches the others as "<sender address>: <line>". A line over 4 KiB gets "* line too
// long" and a close; SIGINT/SIGTERM gives everyone "* server shutting down" and exits 0.
//
// Slow clients: each client has its own writer task and a queue of at most 256 KiB, so a slow
// reader never slows the others. A client whose queue would overflow is too slow: the queue is
// dropped at once (memory stays bounded), the write in progress gets one more second, then the
// client is sent "* too slow, disconnected" (best effort, one second) and closed.
//
// Threads: with --threads N, connections live on N loops and the room has one shard per loop,
// touched only by that loop's thread. A line is made once, as a shared_ptr<const string>, given
// to its own shard directly and posted to the other loops: no lock on the hot path.
#include <atomic>
#include <charconv>
#include <cstdio>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>

#include <netloop/netloop.hpp>

using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr std::size_t max_line = 4096;
constexpr std::size_t max_queued = 256 * 1024;
constexpr std::size_t max_batch = 64 * 1024;
constexpr netloop::duration patience = 1s;  // one write attempt; see "Slow clients"

using line_ptr = std::shared_ptr<const std::string>;
struct client;

// The clients of one loop. `owner` is set once, by the first client on that loop; `clients` is
// touched only on that loop's thread.
struct shard {
    std::atomic<netloop::loop*> owner{nullptr};
    std::vector<client*> clients;

    void deliver(const line_ptr& line, const client* except);
};

// One connected client: its connection, its outgoing queue, and the writer's wake-up call.
struct client {
    client(shard& s, netloop::connection& c)
        : conn(c), name(c.remote_address().to_string()), home(s), wake(c.owner().context()) {
        home.clients.push_back(this);
    }
    ~client() { std::erase(home.clients, this); }

    // Stops taking lines; the writer sends what is queued, then `farewell`, then closes.
    void leave(std::string_view farewell) {
        if (leaving) return;
        leaving = true;
        this->farewell = farewell;
        wake.cancel();
    }

    // Queues `line` for the writer, or finds the client too slow.
    void push(const line_ptr& line) {
        if (leaving) return;
        if (queued + line->size() > max_queued) {
            queue.clear();
            queued = 0;
            return leave("* too slow, disconnected\n");
        }
        queued += line->size();
        queue.push_back(line);
        wake.cancel();
    }

    netloop::connection& conn;
    std::string name;  // "127.0.0.1:5555"
    shard& home;
    std::deque<line_ptr> queue;
    std::size_t queued = 0;  // bytes in `queue`
    bool leaving = false;
    std::string_view farewell;
    asio::steady_timer wake;  // the writer waits on it; cancel() wakes it
};

void shard::deliver(const line_ptr& line, const client* except) {
    for (auto* c : clients) {
        if (c != except) c->push(line);
    }
}

// All the shards, one per serve() thread, made up front; each loop claims one at first use.
class room {
public:
    explicit room(std::size_t loops) : shards_(loops) {}

    // The calling loop's shard.
    shard& here() {
        auto* l = &netloop::loop::current();
        for (auto& s : shards_) {
            if (s.owner.load(std::memory_order_acquire) == l) return s;
        }
        auto index = claimed_.fetch_add(1);
        if (index >= shards_.size()) throw std::logic_error("chat: more loops than shards");
        shards_[index].owner.store(l, std::memory_order_release);
        return shards_[index];
    }

    // Sends `text` from `from` to everyone else, on every loop.
    void broadcast(const client& from, std::string_view text) {
        auto line =
            std::make_shared<const std::string>(from.name + ": " + std::string(text) + "\n");
        for (auto& s : shards_) {
            auto* l = s.owner.load(std::memory_order_acquire);
            if (l == nullptr) continue;  // no client there yet
            if (&s == &from.home) {
                s.deliver(line, &from);
            } else {
                l->post([&s, line] { s.deliver(line, nullptr); });
            }
        }
    }

    // Says goodbye to every client, on every loop (called when the drain begins).
    void close_all() {
        for (auto& s : shards_) {
            auto* l = s.owner.load(std::memory_order_acquire);
            if (l == nullptr) continue;
            l->post([&s] {
                for (auto* c : s.clients) c->leave("* server shutting down\n");
            });
        }
    }

private:
    std::vector<shard> shards_;  // never resized: the posted deliveries hold references
    std::atomic<std::size_t> claimed_{0};
};

// Reads lines and broadcasts them until the client leaves, one way or another.
netloop::task<> read_lines(room& r, client& me) {
    for (;;) {
        std::string_view line;
        try {
            line = co_await me.conn.read_until("\n", max_line, netloop::no_timeout);
        } catch (const netloop::error& e) {
            // Closed, reset, cancelled (the drain), or closed by the writer: nothing to say.
            me.leave(e.kind() == netloop::errc::message_too_large ? "* line too long\n" : "");
            co_return;
        }
        if (line.ends_with('\r')) line.remove_suffix(1);  // telnet and friends send CRLF
        r.broadcast(me, line);
    }
}

// Writes `text`, resuming after each second without progress; false if the client left first.
netloop::task<bool> send(client& me, std::string_view text) {
    for (;;) {
        try {
            co_await me.conn.write(text, patience);
            co_return true;
        } catch (const netloop::error& e) {
            if (e.kind() != netloop::errc::timeout) throw;
            text.remove_prefix(e.bytes_written());
        }
        if (me.leaving) co_return false;
    }
}

// Drains the queue onto the wire until the client leaves; then the farewell, if any, and close.
// Lines go out in batches of up to 64 KiB, to keep up with readers that broadcast many at once.
netloop::task<> write_lines(client& me) {
    std::string batch;
    try {
        while (!me.queue.empty() || !me.leaving) {
            if (me.queue.empty()) {
                me.wake.expires_at(asio::steady_timer::time_point::max());
                asio::error_code woken;  // by cancel(): operation_aborted
                co_await me.wake.async_wait(asio::redirect_error(asio::use_awaitable, woken));
                continue;
            }
            batch.clear();
            while (!me.queue.empty() && batch.size() < max_batch) {
                batch += *me.queue.front();
                me.queued -= me.queue.front()->size();
                me.queue.pop_front();
            }
            bool sent = co_await send(me, batch);
            if (!sent) break;
        }
        if (!me.farewell.empty()) co_await me.conn.write(me.farewell, patience);
    } catch (const std::system_error&) {
        // Gone, too slow for the farewell, or cancelled (Asio throws at the next co_await).
    }
    me.conn.close();  // ends the reader's pending read, if any
}

// One client's whole life: the reader and the writer run side by side until both have ended.
netloop::task<> chat(room& r, netloop::connection conn) {
    client me(r.here(), conn);
    co_await (read_lines(r, me) && write_lines(me));
}

}  // namespace

int main(int argc, char** argv) {
    std::string_view at = "127.0.0.1:7000";
    std::size_t threads = 1;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--threads" && i + 1 < argc) {
            std::string_view n = argv[++i];
            auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), threads);
            if (ec == std::errc() && end == n.data() + n.size() && threads > 0) continue;
        } else if (i == 1 && !arg.starts_with("--")) {
            at = arg;
            continue;
        }
        std::fprintf(stderr, "usage: chat [host:port] [--threads N]\n");
        return 2;
    }

    room everyone(threads);
    try {
        // With .rethrow the error comes to the catch below, so a bad address exits 2.
        return netloop::run(
            [&]() -> netloop::task<> {
                auto server = netloop::server::listen(netloop::address::parse(at));
                netloop::announce(server);
                auto handler = [&everyone](netloop::connection c) {
                    return chat(everyone, std::move(c));
                };
                netloop::serve_options options{.drain_timeout = 2s,
                                               .threads = threads,
                                               .on_drain = [&everyone] { everyone.close_all(); }};
                // The first SIGINT/SIGTERM starts the drain.
                co_await server.serve(handler, options);
            },
            netloop::run_options{.rethrow = true});
    } catch (const netloop::error& e) {
        std::fprintf(stderr, "chat: %s\n", e.what());
        return e.kind() == netloop::errc::invalid_address ? 2 : 1;
    }
}
