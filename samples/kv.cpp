// SPDX-License-Identifier: MIT
// kv: an in-memory key-value server that speaks Redis's protocol, for redis-cli and
// redis-benchmark.
//
//     kv [host:port]                     default 127.0.0.1:6379 (no auth, so loopback only)
//     redis-cli -p 6379 SET greeting hello EX 60
//     redis-benchmark -q -t set,get -P 16
//
// One task per client reads what has arrived, runs every complete command in it, and answers
// all of them with one write: that is pipelining. All clients share one `store`; the loop runs
// one task at a time, so it needs no lock.
#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <asio/redirect_error.hpp>

#include <netloop/netloop.hpp>

#include "resp.hpp"

using namespace std::chrono_literals;

namespace {

// A kv client may sit idle for hours (an open redis-cli), as Redis's default `timeout 0` allows:
// reads wait without a limit. A client that does not take its replies within 30 s is dropped.
constexpr netloop::duration idle_timeout = netloop::no_timeout;
constexpr netloop::duration write_timeout = 30s;

// The read buffer starts at Redis's read size and grows only while a request needs it. A client
// whose unfinished request passes 1 GiB (Redis's client-query-buffer-limit) is dropped.
constexpr std::size_t initial_buffer = 16 * 1024;
constexpr std::size_t max_buffer = std::size_t{1024} * 1024 * 1024;
// Replies are sent once per batch of requests, or earlier once they pass this size.
constexpr std::size_t flush_threshold = 64 * 1024;

constexpr std::int64_t max_int64 = std::numeric_limits<std::int64_t>::max();

/// Milliseconds on the monotonic clock: what expiry times are measured in.
std::int64_t now_ms() {
    auto since_start = std::chrono::steady_clock::now().time_since_epoch();
    return std::chrono::duration_cast<std::chrono::milliseconds>(since_start).count();
}

bool iequals(std::string_view a, std::string_view b) {
    return std::ranges::equal(a, b, [](char x, char y) {
        return std::tolower(static_cast<unsigned char>(x)) ==
               std::tolower(static_cast<unsigned char>(y));
    });
}

/// Hashes `std::string` and `std::string_view` alike, so lookups by a view do not copy the key.
struct key_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view key) const noexcept {
        return std::hash<std::string_view>{}(key);
    }
};

/// The keys and values, with optional expiry times.
///
/// An expired key is removed when it is next touched (lazily), and by `remove_expired()`, which
/// the server calls periodically so keys nobody reads again do not stay in memory.
class store {
public:
    /// The value of `key`, or null if it does not exist (or has just expired).
    std::string* find(std::string_view key) {
        auto it = entries_.find(key);
        if (it == entries_.end()) return nullptr;
        if (it->second.expiry != expiries_.end() && it->second.expiry->first <= now_ms()) {
            erase(it);
            return nullptr;
        }
        return &it->second.value;
    }

    /// Sets `key` to `value`; it expires at `expires_at_ms`, or never if that is empty.
    void set(std::string_view key, std::string value, std::optional<std::int64_t> expires_at_ms) {
        auto it = entries_.find(key);
        if (it == entries_.end()) {
            it = entries_.emplace(std::string(key), entry{{}, expiries_.end()}).first;
        }
        it->second.value = std::move(value);
        set_expiry(it, expires_at_ms);
    }

    /// Makes an existing `key` expire at `expires_at_ms` (or never). False if there is no key.
    bool expire(std::string_view key, std::optional<std::int64_t> expires_at_ms) {
        if (find(key) == nullptr) return false;
        set_expiry(entries_.find(key), expires_at_ms);
        return true;
    }

    /// When `key` expires: empty if it never does. The key must exist.
    std::optional<std::int64_t> expiry(std::string_view key) const {
        auto it = entries_.find(key);
        if (it->second.expiry == expiries_.end()) return std::nullopt;
        return it->second.expiry->first;
    }

    /// Removes `key`; false if it did not exist.
    bool erase(std::string_view key) {
        if (find(key) == nullptr) return false;
        erase(entries_.find(key));
        return true;
    }

    /// How many keys there are (like Redis, expired ones not yet removed included).
    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

    /// Removes every key.
    void clear() {
        entries_.clear();
        expiries_.clear();
    }

    /// Removes the keys whose time has come.
    void remove_expired() {
        auto now = now_ms();
        while (!expiries_.empty() && expiries_.begin()->first <= now) {
            erase(entries_.find(expiries_.begin()->second));
        }
    }

private:
    // Expiry times in order, each with its key: the sweep takes them from the front.
    using expiry_index = std::multimap<std::int64_t, std::string>;
    struct entry {
        std::string value;
        expiry_index::iterator expiry;  // into expiries_, or expiries_.end(): never expires
    };
    using entry_map = std::unordered_map<std::string, entry, key_hash, std::equal_to<>>;

    void set_expiry(entry_map::iterator it, std::optional<std::int64_t> expires_at_ms) {
        if (it->second.expiry != expiries_.end()) expiries_.erase(it->second.expiry);
        it->second.expiry =
            expires_at_ms ? expiries_.emplace(*expires_at_ms, it->first) : expiries_.end();
    }

    void erase(entry_map::iterator it) {
        if (it->second.expiry != expiries_.end()) expiries_.erase(it->second.expiry);
        entries_.erase(it);
    }

    entry_map entries_;
    expiry_index expiries_;
};

// The commands. Each appends its reply to `out`; `args[0]` is the command's name.

using arguments = std::span<const std::string_view>;

void not_an_integer(std::string& out) {
    resp::append_error(out, "ERR value is not an integer or out of range");
}

void syntax_error(std::string& out) { resp::append_error(out, "ERR syntax error"); }

/// A relative expiry (`amount` seconds or milliseconds from now) as an absolute time, or empty
/// where Redis says "invalid expire time" (it would overflow).
std::optional<std::int64_t> expiry_time(std::int64_t amount, bool seconds) {
    if (seconds) {
        if (amount > max_int64 / 1000 || amount < -max_int64 / 1000) return std::nullopt;
        amount *= 1000;
    }
    auto now = now_ms();
    if (amount > max_int64 - now) return std::nullopt;
    return now + amount;
}

void ping(store&, arguments args, std::string& out) {
    if (args.size() == 1) {
        resp::append_simple_string(out, "PONG");
    } else {
        resp::append_bulk_string(out, args[1]);
    }
}

void echo(store&, arguments args, std::string& out) { resp::append_bulk_string(out, args[1]); }

void get(store& db, arguments args, std::string& out) {
    if (auto* value = db.find(args[1])) {
        resp::append_bulk_string(out, *value);
    } else {
        resp::append_null_bulk_string(out);
    }
}

// SET key value [NX | XX] [EX seconds | PX milliseconds | KEEPTTL]
void set(store& db, arguments args, std::string& out) {
    bool nx = false;
    bool xx = false;
    bool keep_ttl = false;
    std::optional<std::int64_t> expires_at;
    for (std::size_t i = 3; i < args.size(); ++i) {
        bool has_ttl = expires_at || keep_ttl;
        if (iequals(args[i], "NX") && !xx) {
            nx = true;
        } else if (iequals(args[i], "XX") && !nx) {
            xx = true;
        } else if (iequals(args[i], "KEEPTTL") && !has_ttl) {
            keep_ttl = true;
        } else if ((iequals(args[i], "EX") || iequals(args[i], "PX")) && !has_ttl &&
                   i + 1 < args.size()) {
            bool seconds = iequals(args[i], "EX");
            auto amount = resp::parse_integer(args[++i]);
            if (!amount) return not_an_integer(out);
            if (*amount > 0) expires_at = expiry_time(*amount, seconds);
            if (!expires_at) {
                return resp::append_error(out, "ERR invalid expire time in 'set' command");
            }
        } else {
            return syntax_error(out);
        }
    }
    bool exists = db.find(args[1]) != nullptr;
    if ((nx && exists) || (xx && !exists)) return resp::append_null_bulk_string(out);
    if (keep_ttl && exists) expires_at = db.expiry(args[1]);
    db.set(args[1], std::string(args[2]), expires_at);
    resp::append_simple_string(out, "OK");
}

void del(store& db, arguments args, std::string& out) {
    auto removed = std::ranges::count_if(args.subspan(1), [&](auto key) { return db.erase(key); });
    resp::append_integer(out, removed);
}

void exists(store& db, arguments args, std::string& out) {
    auto found =
        std::ranges::count_if(args.subspan(1), [&](auto key) { return db.find(key) != nullptr; });
    resp::append_integer(out, found);
}

// INCR and DECR: the value is a decimal 64-bit integer (a missing key counts as 0); the key keeps
// its expiry time.
void add(store& db, std::string_view key, std::int64_t delta, std::string& out) {
    std::int64_t value = 0;
    if (auto* text = db.find(key)) {
        auto parsed = resp::parse_integer(*text);
        if (!parsed) return not_an_integer(out);
        value = *parsed;
    }
    if ((delta > 0 && value > max_int64 - delta) ||
        (delta < 0 && value < std::numeric_limits<std::int64_t>::min() - delta)) {
        return resp::append_error(out, "ERR increment or decrement would overflow");
    }
    value += delta;
    if (auto* text = db.find(key)) {
        *text = std::to_string(value);
    } else {
        db.set(key, std::to_string(value), std::nullopt);
    }
    resp::append_integer(out, value);
}

void incr(store& db, arguments args, std::string& out) { add(db, args[1], 1, out); }

void decr(store& db, arguments args, std::string& out) { add(db, args[1], -1, out); }

void mget(store& db, arguments args, std::string& out) {
    resp::append_array_header(out, args.size() - 1);
    for (auto key : args.subspan(1)) get(db, std::array{std::string_view("GET"), key}, out);
}

void mset(store& db, arguments args, std::string& out) {
    if (args.size() % 2 == 0) {
        return resp::append_error(out, "ERR wrong number of arguments for 'mset' command");
    }
    for (std::size_t i = 1; i < args.size(); i += 2) {
        db.set(args[i], std::string(args[i + 1]), std::nullopt);
    }
    resp::append_simple_string(out, "OK");
}

// EXPIRE key seconds: a time in the past deletes the key. Redis 7's NX/XX/GT/LT are not here.
void expire(store& db, arguments args, std::string& out) {
    if (args.size() > 3) {
        return resp::append_error(out, "ERR Unsupported option " + std::string(args[3]));
    }
    auto seconds = resp::parse_integer(args[2]);
    if (!seconds) return not_an_integer(out);
    auto when = expiry_time(*seconds, true);
    if (!when) return resp::append_error(out, "ERR invalid expire time in 'expire' command");
    bool found = *when <= now_ms() ? db.erase(args[1]) : db.expire(args[1], when);
    resp::append_integer(out, found ? 1 : 0);
}

// TTL key: seconds left (rounded), -1 for a key without expiry, -2 for no key.
void ttl(store& db, arguments args, std::string& out) {
    if (db.find(args[1]) == nullptr) return resp::append_integer(out, -2);
    auto when = db.expiry(args[1]);
    if (!when) return resp::append_integer(out, -1);
    resp::append_integer(out, (*when - now_ms() + 500) / 1000);
}

void dbsize(store& db, arguments, std::string& out) {
    resp::append_integer(out, static_cast<std::int64_t>(db.size()));
}

void flushall(store& db, arguments args, std::string& out) {
    if (args.size() > 2 ||
        (args.size() == 2 && !iequals(args[1], "ASYNC") && !iequals(args[1], "SYNC"))) {
        return syntax_error(out);
    }
    db.clear();
    resp::append_simple_string(out, "OK");
}

void command_count(std::string& out);

// COMMAND: redis-cli asks for `COMMAND DOCS` to offer hints; an empty answer means "none".
void command(store&, arguments args, std::string& out) {
    if (args.size() == 2 && iequals(args[1], "COUNT")) return command_count(out);
    resp::append_array_header(out, 0);
}

// CONFIG GET: redis-benchmark asks for `save` and `appendonly` before it starts.
void config(store&, arguments args, std::string& out) {
    if (!iequals(args[1], "GET")) {
        return resp::append_error(
            out, "ERR unknown subcommand '" + std::string(args[1]) + "'. Try CONFIG HELP.");
    }
    if (args.size() < 3) {
        return resp::append_error(out, "ERR wrong number of arguments for 'config|get' command");
    }
    static constexpr std::array<std::pair<std::string_view, std::string_view>, 3> settings{{
        {"save", ""},  // nothing is ever saved
        {"appendonly", "no"},
        {"databases", "1"},
    }};
    std::vector<std::pair<std::string_view, std::string_view>> found;
    for (auto name : args.subspan(2)) {
        for (const auto& setting : settings) {
            if (iequals(name, setting.first)) found.push_back(setting);
        }
    }
    resp::append_array_header(out, found.size() * 2);
    for (const auto& [name, value] : found) {
        resp::append_bulk_string(out, name);
        resp::append_bulk_string(out, value);
    }
}

struct command_spec {
    std::string_view name;  // lower case, as Redis names commands in its errors
    int arity;  // Redis's convention, the name included: n means exactly n, -n at least n
    void (*run)(store&, arguments, std::string&);
};

constexpr std::array commands{
    command_spec{"ping", -1, ping},       command_spec{"echo", 2, echo},
    command_spec{"get", 2, get},          command_spec{"set", -3, set},
    command_spec{"del", -2, del},         command_spec{"exists", -2, exists},
    command_spec{"incr", 2, incr},        command_spec{"decr", 2, decr},
    command_spec{"mget", -2, mget},       command_spec{"mset", -3, mset},
    command_spec{"expire", -3, expire},   command_spec{"ttl", 2, ttl},
    command_spec{"dbsize", 1, dbsize},    command_spec{"flushall", -1, flushall},
    command_spec{"command", -1, command}, command_spec{"config", -2, config},
};

void command_count(std::string& out) {
    resp::append_integer(out, static_cast<std::int64_t>(commands.size()) + 1);  // and QUIT
}

// Redis's words: `unknown command 'foo', with args beginning with: 'a' 'b' `.
void unknown_command(arguments args, std::string& out) {
    std::string message = "ERR unknown command '" + std::string(args[0].substr(0, 128)) +
                          "', with args beginning with: ";
    std::string quoted;
    for (auto arg : args.subspan(1)) {
        if (quoted.size() >= 128) break;
        // Piece by piece: g++ 12 at -O3 warns (-Wrestrict, falsely) on "'" + std::string(...).
        auto piece = arg.substr(0, 128 - quoted.size());
        quoted += '\'';
        quoted += piece;
        quoted += "' ";
    }
    resp::append_error(out, message + quoted);
}

/// Runs one command and appends its reply to `out`.
void execute(store& db, arguments args, std::string& out) {
    auto spec = std::ranges::find_if(commands, [&](auto& c) { return iequals(c.name, args[0]); });
    if (spec == commands.end()) return unknown_command(args, out);
    auto count = static_cast<int>(args.size());  // at most resp::max_arguments
    if (spec->arity > 0 ? count != spec->arity : count < -spec->arity) {
        return resp::append_error(
            out, "ERR wrong number of arguments for '" + std::string(spec->name) + "' command");
    }
    spec->run(db, args, out);
}

/// The next size of a full read buffer of `size` bytes, when the request needs `wanted` in all.
///
/// It grows with what has arrived, by half to double, and never by a length the client merely
/// claims: `wanted` only stops the growth short of doubling when the request needs less.
std::size_t grown_size(std::size_t size, std::size_t wanted) {
    return std::min({std::max(size + size / 2, wanted), size * 2, max_buffer});
}

/// Reads what has arrived into `buf`; 0 once the client has closed its side.
netloop::task<std::size_t> read_some(netloop::connection& conn, std::span<char> buf) {
    try {
        co_return co_await conn.read(std::as_writable_bytes(buf), idle_timeout);
    } catch (const netloop::error& e) {
        if (e.kind() != netloop::errc::connection_closed) throw;
    }
    co_return 0;
}

/// Serves one client until it quits, closes, or breaks the protocol.
netloop::task<> serve_client(netloop::connection conn, store& db) {
    std::vector<char> buffer(initial_buffer);
    std::size_t used = 0;    // bytes in `buffer`, the unfinished request first
    std::size_t wanted = 1;  // parsing again is pointless before `used` reaches this
    resp::progress resume;   // how far the unfinished request was parsed already
    std::string replies;
    for (;;) {
        if (used == buffer.size()) {
            if (buffer.size() >= max_buffer) co_return;
            buffer.resize(grown_size(buffer.size(), wanted));
        }
        std::size_t n = co_await read_some(conn, std::span(buffer).subspan(used));
        if (n == 0) {
            // Redis closes silently here; saying why helps whoever typed into `nc`.
            if (used == 0) co_return;
            resp::append_error(replies, "ERR Protocol error: unexpected end of input");
            co_await conn.write(replies, write_timeout);
            co_return;
        }
        used += n;
        if (used < wanted) continue;

        // Run every complete request in the buffer, in order.
        std::string_view pending(buffer.data(), used);
        std::size_t done = 0;
        bool quit = false;
        while (!quit) {
            auto request = resp::parse(pending.substr(done), resume);
            resume = request.resume;
            if (request.state == resp::status::incomplete) {
                wanted = request.wanted;  // relative to `done`, which is about to become 0
                break;
            }
            if (request.state == resp::status::error) {
                // Like Redis: the replies so far, then the error, then close.
                resp::append_error(replies, "ERR Protocol error: " + request.error);
                co_await conn.write(replies, write_timeout);
                co_return;
            }
            done += request.consumed;
            if (request.args.empty()) continue;  // a blank line or `*0`
            if (iequals(request.args[0], "quit")) {
                resp::append_simple_string(replies, "OK");
                quit = true;
            } else {
                execute(db, request.args, replies);
            }
            if (replies.size() >= flush_threshold) {
                co_await conn.write(replies, write_timeout);
                replies.clear();
            }
        }
        if (!replies.empty()) {
            co_await conn.write(replies, write_timeout);
            replies.clear();
        }
        if (quit) co_return;

        // Keep the unfinished request at the front; give back a buffer a big request grew.
        std::memmove(buffer.data(), buffer.data() + done, used - done);
        used -= done;
        if (buffer.size() > initial_buffer && used <= initial_buffer) {
            buffer.resize(initial_buffer);
            buffer.shrink_to_fit();
        }
        if (replies.capacity() > flush_threshold * 4) std::string().swap(replies);
    }
}

/// Serves one client; whatever ends it (reset, a stuck reader, the server stopping) ends only it.
netloop::task<> client(netloop::connection conn, store& db) {
    try {
        co_await serve_client(std::move(conn), db);
    } catch (const netloop::error&) {
        // Nothing to tell: the client is gone.
    }
}

/// Removes expired keys ten times a second, until the server stops.
netloop::task<> remove_expired_keys(store& db) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
        timer.expires_after(100ms);
        asio::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;  // cancelled: the server is stopping
        db.remove_expired();
    }
}

}  // namespace

int main(int argc, char** argv) {
    store db;  // outlives run(), so no client task can see it destroyed
    // A startup error (a bad address, the port in use) is "kv: <what>" on stderr and status 1.
    return netloop::run([&]() -> netloop::task<> {
        auto at = netloop::address::parse(argc > 1 ? argv[1] : "127.0.0.1:6379");
        auto server = netloop::server::listen(at);
        netloop::announce(server);
        netloop::spawn(remove_expired_keys(db));
        auto conns = server.connections();
        while (auto conn = co_await conns.next()) netloop::spawn(client(std::move(*conn), db));
    });
}
