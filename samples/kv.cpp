// SPDX-License-Identifier: MIT
// kv: an in-memory key-value server that speaks Redis's protocol, for redis-cli and
// redis-benchmark.
//
//     kv [host:port] [--maxclients N] [--timeout S]
//                          default 127.0.0.1:6379 (no auth, so loopback only); as Redis's
//                          maxclients (10000; over it "-ERR max number of clients reached") and
//                          timeout (seconds a client may stay idle; 0, the default, is no limit)
//     redis-cli -p 6379 SET greeting hello EX 60
//     redis-benchmark -q -t set,get -P 16
//
// serve() runs one task per client, which reads what has arrived, runs every complete command in
// it, and answers all of them with one write: that is pipelining. All clients share one `store`;
// the loop runs one task at a time, so it needs no lock. On SIGTERM or SIGINT the server drains:
// a client between commands is closed at once, one in the middle of a command (half a SET sent)
// finishes it and gets its reply first, because the task marks where its commands begin.
#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <sys/utsname.h>
#include <unistd.h>
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
// whose unfinished request passes 1 GiB (Redis's client-query-buffer-limit) is dropped, as Redis
// drops it: silently. The views of the arguments parsed so far count towards that limit too.
constexpr std::size_t initial_buffer = 16 * 1024;
constexpr std::size_t max_buffer = std::size_t{1024} * 1024 * 1024;
// Replies are sent once per batch of requests, or earlier once they pass this size.
constexpr std::size_t flush_threshold = 64 * 1024;

constexpr std::int64_t max_int64 = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t min_int64 = std::numeric_limits<std::int64_t>::min();

// The longest string APPEND and SETRANGE may build: Redis's proto-max-bulk-len.
constexpr std::size_t max_string = resp::max_bulk_length;

// What kv tells clients it is (INFO, HELLO): the Redis version whose replies it follows.
constexpr std::string_view emulated_version = "7.0.0";

/// Milliseconds since the Unix epoch. Expiry times are wall-clock times, as in Redis, so that
/// EXPIREAT, EXPIRETIME and SET ... EXAT mean the Unix times they name.
std::int64_t now_ms() {
    auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
    return std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count();
}

// ASCII case folding, as Redis's strcasecmp in the C locale: command names and options.
constexpr char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

bool iequals(std::string_view a, std::string_view b) {
    return std::ranges::equal(a, b,
                              [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

/// Hashes `std::string` and `std::string_view` alike, so lookups by a view do not copy the key.
/// SCAN's cursor is a position in the order of this hash.
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
        if (it->second.expiry != expiries_.end() && expired(it->second, now_ms())) {
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

    /// Removes every key, and gives back the memory of the table.
    void clear() {
        entry_map().swap(entries_);
        expiries_.clear();
    }

    /// Removes the keys whose time has come.
    void remove_expired() {
        auto now = now_ms();
        while (!expiries_.empty() && expiries_.begin()->first <= now) {
            erase(entries_.find(expiries_.begin()->second));
        }
    }

    /// Calls `visit(key)` for every key that has not expired, in no particular order.
    template <typename Visit>
    void for_each_key(Visit visit) const {
        auto now = now_ms();
        for (const auto& [key, e] : entries_) {
            if (!expired(e, now)) visit(std::string_view(key));
        }
    }

    /// A key chosen at random, or empty if there is none.
    std::optional<std::string> random_key(std::mt19937_64& random) {
        while (!entries_.empty()) {
            auto it = entries_.end();
            if (entries_.size() * 4 < entries_.bucket_count()) {
                // Sparse (after many deletions): walk to a random position.
                std::uniform_int_distribution<std::size_t> position(0, entries_.size() - 1);
                it = std::next(entries_.begin(), static_cast<std::ptrdiff_t>(position(random)));
            } else {
                // A random non-empty bucket, then a random key in it.
                std::uniform_int_distribution<std::size_t> pick(0, entries_.bucket_count() - 1);
                std::size_t bucket = pick(random);
                while (entries_.bucket_size(bucket) == 0) bucket = pick(random);
                std::uniform_int_distribution<std::size_t> in_bucket(
                    0, entries_.bucket_size(bucket) - 1);
                auto local = std::next(entries_.begin(bucket),
                                       static_cast<std::ptrdiff_t>(in_bucket(random)));
                it = entries_.find(local->first);
            }
            if (!expired(it->second, now_ms())) return it->first;
            erase(it);  // as Redis does: an expired pick is removed, and another one drawn
        }
        return std::nullopt;
    }

    /// Renames `from` (which must exist) to `to`, with its expiry time, replacing any `to`.
    void rename(std::string_view from, std::string_view to) {
        auto it = entries_.find(from);
        std::string value = std::move(it->second.value);
        auto when = expiry(from);
        erase(it);
        set(to, std::move(value), when);
    }

private:
    // Expiry times in order, each with its key: the sweep takes them from the front.
    using expiry_index = std::multimap<std::int64_t, std::string>;
    struct entry {
        std::string value;
        expiry_index::iterator expiry;  // into expiries_, or expiries_.end(): never expires
    };
    using entry_map = std::unordered_map<std::string, entry, key_hash, std::equal_to<>>;

    bool expired(const entry& e, std::int64_t now) const {
        return e.expiry != expiries_.end() && e.expiry->first <= now;
    }

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

/// What every client shares besides the keys: for INFO, HELLO and RANDOMKEY.
struct server_state {
    std::uint16_t port = 0;
    std::int64_t started_ms = now_ms();
    std::size_t clients = 0;
    std::size_t max_clients = 10000;  // --maxclients, Redis's default
    std::int64_t next_client_id = 1;
    std::mt19937_64 random{std::random_device{}()};
};

/// What a command may use: the keys, the server, and which client asks.
struct session {
    store& db;
    server_state& server;
    std::int64_t client_id;
};

// The commands. Each appends its reply to `out`; `args[0]` is the command's name. Where an error
// is possible, the checks come in Redis's order, so the same mistake gets the same error.

using arguments = std::span<const std::string_view>;

void not_an_integer(std::string& out) {
    resp::append_error(out, "ERR value is not an integer or out of range");
}

void syntax_error(std::string& out) { resp::append_error(out, "ERR syntax error"); }

void wrong_arity(std::string_view name, std::string& out) {
    resp::append_error(out,
                       "ERR wrong number of arguments for '" + std::string(name) + "' command");
}

void invalid_expire_time(std::string_view name, std::string& out) {
    resp::append_error(out, "ERR invalid expire time in '" + std::string(name) + "' command");
}

/// An integer argument, or empty after replying Redis's error.
std::optional<std::int64_t> integer_or_reply(std::string_view text, std::string& out) {
    auto value = resp::parse_integer(text);
    if (!value) not_an_integer(out);
    return value;
}

/// The bytes `text` names in full: a null-terminated copy for the C functions Redis uses.
std::string c_string(std::string_view text) { return std::string(text); }

/// Lower-case command name for errors: Redis names commands as it defines them.
std::string lower(std::string_view text) {
    std::string out(text);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

/// A time-to-live or an absolute time for SET, SETEX, PSETEX and GETEX, in Unix milliseconds, or
/// empty after replying Redis's error: it must be positive and must not overflow.
std::optional<std::int64_t> expiry_or_reply(std::string_view text, bool seconds, bool relative,
                                            std::string_view command, std::string& out) {
    auto amount = integer_or_reply(text, out);
    if (!amount) return std::nullopt;
    if (*amount <= 0 || (seconds && *amount > max_int64 / 1000)) {
        invalid_expire_time(command, out);
        return std::nullopt;
    }
    std::int64_t when = seconds ? *amount * 1000 : *amount;
    if (relative) {
        auto now = now_ms();
        if (when > max_int64 - now) {
            invalid_expire_time(command, out);
            return std::nullopt;
        }
        when += now;
    }
    return when;
}

/// The options SET and GETEX share, read as Redis reads them: the same conflicts are errors.
struct string_options {
    bool nx = false;
    bool xx = false;
    bool get = false;
    bool keep_ttl = false;
    bool persist = false;
    std::string_view expiry_kind;  // "EX", "PX", "EXAT", "PXAT" or empty
    std::string_view expiry;       // its argument
};

/// Reads the options from `args[first]` on; false after replying `syntax error`.
bool parse_string_options(arguments args, std::size_t first, bool for_set, string_options& o,
                          std::string& out) {
    for (std::size_t i = first; i < args.size(); ++i) {
        auto opt = args[i];
        bool has_next = i + 1 < args.size();
        bool free_expiry = !o.keep_ttl && !o.persist;
        if (for_set && iequals(opt, "NX") && !o.xx) {
            o.nx = true;
        } else if (for_set && iequals(opt, "XX") && !o.nx) {
            o.xx = true;
        } else if (for_set && iequals(opt, "GET")) {
            o.get = true;
        } else if (for_set && iequals(opt, "KEEPTTL") && !o.persist && o.expiry_kind.empty()) {
            o.keep_ttl = true;
        } else if (!for_set && iequals(opt, "PERSIST") && o.expiry_kind.empty() && !o.keep_ttl) {
            o.persist = true;
        } else if ((iequals(opt, "EX") || iequals(opt, "PX") || iequals(opt, "EXAT") ||
                    iequals(opt, "PXAT")) &&
                   free_expiry && (o.expiry_kind.empty() || iequals(o.expiry_kind, opt)) &&
                   has_next) {
            o.expiry_kind = opt;
            o.expiry = args[++i];
        } else {
            syntax_error(out);
            return false;
        }
    }
    return true;
}

/// The absolute expiry time the options ask for (empty if none), or false after an error reply.
bool options_expiry(const string_options& o, std::string_view command,
                    std::optional<std::int64_t>& when, std::string& out) {
    if (o.expiry_kind.empty()) return true;
    bool seconds = iequals(o.expiry_kind, "EX") || iequals(o.expiry_kind, "EXAT");
    bool relative = o.expiry_kind.size() == 2;
    when = expiry_or_reply(o.expiry, seconds, relative, command, out);
    return when.has_value();
}

void ping(session&, arguments args, std::string& out) {
    if (args.size() > 2) return wrong_arity("ping", out);
    if (args.size() == 1) {
        resp::append_simple_string(out, "PONG");
    } else {
        resp::append_bulk_string(out, args[1]);
    }
}

void echo(session&, arguments args, std::string& out) { resp::append_bulk_string(out, args[1]); }

void get(session& s, arguments args, std::string& out) {
    if (auto* value = s.db.find(args[1])) {
        resp::append_bulk_string(out, *value);
    } else {
        resp::append_null_bulk_string(out);
    }
}

/// SET and its variants. With `integer_replies` (SETNX) the answer is :1 or :0, not +OK or nil.
void set_generic(session& s, std::string_view key, std::string_view value, const string_options& o,
                 std::optional<std::int64_t> when, bool integer_replies, std::string& out) {
    if (o.get) get(s, std::array{std::string_view("GET"), key}, out);
    bool exists = s.db.find(key) != nullptr;
    if ((o.nx && exists) || (o.xx && !exists)) {
        if (o.get) return;
        if (integer_replies) return resp::append_integer(out, 0);
        return resp::append_null_bulk_string(out);
    }
    if (o.keep_ttl && exists && !when) when = s.db.expiry(key);
    s.db.set(key, std::string(value), when);
    if (o.get) return;
    if (integer_replies) return resp::append_integer(out, 1);
    resp::append_simple_string(out, "OK");
}

// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT unix-s | PXAT unix-ms | KEEPTTL]
void set(session& s, arguments args, std::string& out) {
    string_options o;
    if (!parse_string_options(args, 3, true, o, out)) return;
    std::optional<std::int64_t> when;
    if (!options_expiry(o, "set", when, out)) return;
    set_generic(s, args[1], args[2], o, when, false, out);
}

void setnx(session& s, arguments args, std::string& out) {
    string_options o;
    o.nx = true;
    set_generic(s, args[1], args[2], o, std::nullopt, true, out);
}

// SETEX key seconds value, PSETEX key milliseconds value
void setex_generic(session& s, arguments args, bool seconds, std::string& out) {
    auto when = expiry_or_reply(args[2], seconds, true, seconds ? "setex" : "psetex", out);
    if (!when) return;
    set_generic(s, args[1], args[3], {}, when, false, out);
}

void setex(session& s, arguments args, std::string& out) { setex_generic(s, args, true, out); }

void psetex(session& s, arguments args, std::string& out) { setex_generic(s, args, false, out); }

void getset(session& s, arguments args, std::string& out) {
    get(s, args, out);
    s.db.set(args[1], std::string(args[2]), std::nullopt);
}

void getdel(session& s, arguments args, std::string& out) {
    get(s, args, out);
    s.db.erase(args[1]);
}

// GETEX key [EX s | PX ms | EXAT unix-s | PXAT unix-ms | PERSIST]
void getex(session& s, arguments args, std::string& out) {
    string_options o;
    if (!parse_string_options(args, 2, false, o, out)) return;
    auto* value = s.db.find(args[1]);
    if (value == nullptr) return resp::append_null_bulk_string(out);
    std::optional<std::int64_t> when;
    if (!options_expiry(o, "getex", when, out)) return;
    resp::append_bulk_string(out, *value);
    if (when && *when <= now_ms()) {
        s.db.erase(args[1]);  // EXAT or PXAT in the past
    } else if (when) {
        s.db.expire(args[1], when);
    } else if (o.persist) {
        s.db.expire(args[1], std::nullopt);
    }
}

// Redis's checkStringLength: what APPEND and SETRANGE may not build.
bool too_long(std::size_t size, std::size_t added, std::string& out) {
    if (size > max_string || added > max_string - size) {
        resp::append_error(out, "ERR string exceeds maximum allowed size (proto-max-bulk-len)");
        return true;
    }
    return false;
}

void append(session& s, arguments args, std::string& out) {
    auto* value = s.db.find(args[1]);
    if (value == nullptr) {
        s.db.set(args[1], std::string(args[2]), std::nullopt);
        return resp::append_integer(out, static_cast<std::int64_t>(args[2].size()));
    }
    if (too_long(value->size(), args[2].size(), out)) return;
    value->append(args[2]);
    resp::append_integer(out, static_cast<std::int64_t>(value->size()));
}

void string_length(session& s, arguments args, std::string& out) {
    auto* value = s.db.find(args[1]);
    resp::append_integer(out, value ? static_cast<std::int64_t>(value->size()) : 0);
}

// GETRANGE key start end: inclusive, negative counts from the end, clamped to the string.
void getrange(session& s, arguments args, std::string& out) {
    auto start = integer_or_reply(args[2], out);
    if (!start) return;
    auto end = integer_or_reply(args[3], out);
    if (!end) return;
    auto* value = s.db.find(args[1]);
    if (value == nullptr) return resp::append_bulk_string(out, "");
    auto size = static_cast<std::int64_t>(value->size());
    auto from = *start;
    auto to = *end;
    if (from < 0 && to < 0 && from > to) return resp::append_bulk_string(out, "");
    if (from < 0) from += size;
    if (to < 0) to += size;
    from = std::max<std::int64_t>(from, 0);
    to = std::max<std::int64_t>(to, 0);
    if (to >= size) to = size - 1;
    if (from > to || size == 0) return resp::append_bulk_string(out, "");
    resp::append_bulk_string(
        out, std::string_view(*value).substr(static_cast<std::size_t>(from),
                                             static_cast<std::size_t>(to - from + 1)));
}

// SETRANGE key offset value: overwrites from `offset`, padding with zero bytes.
void setrange(session& s, arguments args, std::string& out) {
    auto offset = integer_or_reply(args[2], out);
    if (!offset) return;
    if (*offset < 0) return resp::append_error(out, "ERR offset is out of range");
    auto at = static_cast<std::size_t>(*offset);
    auto patch = args[3];
    auto* value = s.db.find(args[1]);
    if (value == nullptr) {
        if (patch.empty()) return resp::append_integer(out, 0);
        if (too_long(at, patch.size(), out)) return;
        s.db.set(args[1], std::string(), std::nullopt);
        value = s.db.find(args[1]);
    } else {
        if (patch.empty())
            return resp::append_integer(out, static_cast<std::int64_t>(value->size()));
        if (too_long(at, patch.size(), out)) return;
    }
    if (value->size() < at + patch.size()) value->resize(at + patch.size(), '\0');
    value->replace(at, patch.size(), patch);
    resp::append_integer(out, static_cast<std::int64_t>(value->size()));
}

void del(session& s, arguments args, std::string& out) {
    auto removed =
        std::ranges::count_if(args.subspan(1), [&](auto key) { return s.db.erase(key); });
    resp::append_integer(out, removed);
}

void exists(session& s, arguments args, std::string& out) {
    auto found =
        std::ranges::count_if(args.subspan(1), [&](auto key) { return s.db.find(key) != nullptr; });
    resp::append_integer(out, found);
}

// INCR, DECR, INCRBY, DECRBY: the value is a decimal 64-bit integer (a missing key counts as 0);
// the key keeps its expiry time.
void add(session& s, std::string_view key, std::int64_t delta, std::string& out) {
    std::int64_t value = 0;
    auto* text = s.db.find(key);
    if (text != nullptr) {
        auto parsed = resp::parse_integer(*text);
        if (!parsed) return not_an_integer(out);
        value = *parsed;
    }
    if ((delta > 0 && value > max_int64 - delta) || (delta < 0 && value < min_int64 - delta)) {
        return resp::append_error(out, "ERR increment or decrement would overflow");
    }
    value += delta;
    if (text != nullptr) {
        *text = std::to_string(value);
    } else {
        s.db.set(key, std::to_string(value), std::nullopt);
    }
    resp::append_integer(out, value);
}

void incr(session& s, arguments args, std::string& out) { add(s, args[1], 1, out); }

void decr(session& s, arguments args, std::string& out) { add(s, args[1], -1, out); }

void incrby(session& s, arguments args, std::string& out) {
    auto delta = integer_or_reply(args[2], out);
    if (delta) add(s, args[1], *delta, out);
}

void decrby(session& s, arguments args, std::string& out) {
    auto delta = integer_or_reply(args[2], out);
    if (!delta) return;
    if (*delta == min_int64) return resp::append_error(out, "ERR decrement would overflow");
    add(s, args[1], -*delta, out);
}

/// A long double in Redis's syntax (its string2ld: strtold, the whole text, no leading blank,
/// no overflow, no NaN); empty if `text` is anything else.
std::optional<long double> parse_float(std::string_view text) {
    constexpr std::size_t max_chars = 5 * 1024;  // Redis's MAX_LONG_DOUBLE_CHARS
    if (text.empty() || text.size() >= max_chars) return std::nullopt;
    auto copy = c_string(text);
    char* end = nullptr;
    errno = 0;
    long double value = std::strtold(copy.c_str(), &end);
    if (std::isspace(static_cast<unsigned char>(copy[0])) || end != copy.c_str() + copy.size() ||
        (errno == ERANGE &&
         (value == HUGE_VALL || value == -HUGE_VALL || std::fpclassify(value) == FP_ZERO)) ||
        errno == EINVAL || std::isnan(value)) {
        return std::nullopt;
    }
    return value;
}

/// `value` as INCRBYFLOAT writes it: 17 decimals, trailing zeros (and point) removed, no "-0".
std::string format_float(long double value) {
    std::array<char, 5 * 1024 + 64> buf{};
    int n = std::snprintf(buf.data(), buf.size(), "%.17Lf", value);
    std::string text(buf.data(), static_cast<std::size_t>(std::max(n, 0)));
    if (text.find('.') != std::string::npos) {
        while (text.back() == '0') text.pop_back();
        if (text.back() == '.') text.pop_back();
    }
    if (text == "-0") text = "0";
    return text;
}

// INCRBYFLOAT key increment: the key keeps its expiry time.
void incrbyfloat(session& s, arguments args, std::string& out) {
    long double value = 0;
    auto* text = s.db.find(args[1]);
    std::optional<long double> current = text ? parse_float(*text) : std::optional(value);
    auto increment = current ? parse_float(args[2]) : std::nullopt;
    if (!current || !increment) return resp::append_error(out, "ERR value is not a valid float");
    value = *current + *increment;
    if (std::isnan(value) || std::isinf(value)) {
        return resp::append_error(out, "ERR increment would produce NaN or Infinity");
    }
    auto result = format_float(value);
    resp::append_bulk_string(out, result);
    if (text != nullptr) {
        *text = std::move(result);
    } else {
        s.db.set(args[1], std::move(result), std::nullopt);
    }
}

void mget(session& s, arguments args, std::string& out) {
    resp::append_array_header(out, args.size() - 1);
    for (auto key : args.subspan(1)) get(s, std::array{std::string_view("GET"), key}, out);
}

void mset(session& s, arguments args, std::string& out) {
    if (args.size() % 2 == 0) return wrong_arity("mset", out);
    for (std::size_t i = 1; i < args.size(); i += 2) {
        s.db.set(args[i], std::string(args[i + 1]), std::nullopt);
    }
    resp::append_simple_string(out, "OK");
}

void msetnx(session& s, arguments args, std::string& out) {
    if (args.size() % 2 == 0) return wrong_arity("msetnx", out);
    for (std::size_t i = 1; i < args.size(); i += 2) {
        if (s.db.find(args[i]) != nullptr) return resp::append_integer(out, 0);
    }
    for (std::size_t i = 1; i < args.size(); i += 2) {
        s.db.set(args[i], std::string(args[i + 1]), std::nullopt);
    }
    resp::append_integer(out, 1);
}

// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX | XX | GT | LT]: a time in the past deletes
// the key; no expiry counts as an infinite one for GT and LT.
void expire_generic(session& s, arguments args, bool relative, bool seconds, std::string& out) {
    bool nx = false, xx = false, gt = false, lt = false;
    for (auto opt : args.subspan(3)) {
        if (iequals(opt, "NX")) {
            nx = true;
        } else if (iequals(opt, "XX")) {
            xx = true;
        } else if (iequals(opt, "GT")) {
            gt = true;
        } else if (iequals(opt, "LT")) {
            lt = true;
        } else {
            return resp::append_error(out, "ERR Unsupported option " + c_string(opt));
        }
    }
    if (nx && (xx || gt || lt)) {
        return resp::append_error(
            out, "ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if (gt && lt) {
        return resp::append_error(out, "ERR GT and LT options at the same time are not compatible");
    }
    auto name = lower(args[0]);
    auto when = integer_or_reply(args[2], out);
    if (!when) return;
    if (seconds) {
        if (*when > max_int64 / 1000 || *when < min_int64 / 1000) {
            return invalid_expire_time(name, out);
        }
        *when *= 1000;
    }
    std::int64_t base = relative ? now_ms() : 0;
    if (*when > max_int64 - base) return invalid_expire_time(name, out);
    *when += base;
    if (s.db.find(args[1]) == nullptr) return resp::append_integer(out, 0);
    auto current = s.db.expiry(args[1]);
    if ((nx && current) || (xx && !current) || (gt && (!current || *when <= *current)) ||
        (lt && current && *when >= *current)) {
        return resp::append_integer(out, 0);
    }
    if (*when <= now_ms()) {
        s.db.erase(args[1]);
    } else {
        s.db.expire(args[1], when);
    }
    resp::append_integer(out, 1);
}

void expire(session& s, arguments args, std::string& out) {
    expire_generic(s, args, true, true, out);
}

void pexpire(session& s, arguments args, std::string& out) {
    expire_generic(s, args, true, false, out);
}

void expireat(session& s, arguments args, std::string& out) {
    expire_generic(s, args, false, true, out);
}

void pexpireat(session& s, arguments args, std::string& out) {
    expire_generic(s, args, false, false, out);
}

// TTL, PTTL, EXPIRETIME, PEXPIRETIME: -2 for no key, -1 for no expiry; seconds are rounded.
void ttl_generic(session& s, arguments args, bool milliseconds, bool absolute, std::string& out) {
    if (s.db.find(args[1]) == nullptr) return resp::append_integer(out, -2);
    auto when = s.db.expiry(args[1]);
    if (!when) return resp::append_integer(out, -1);
    std::int64_t ttl = std::max<std::int64_t>(absolute ? *when : *when - now_ms(), 0);
    resp::append_integer(out, milliseconds ? ttl : ttl / 1000 + (ttl % 1000 >= 500 ? 1 : 0));
}

void ttl(session& s, arguments args, std::string& out) { ttl_generic(s, args, false, false, out); }

void pttl(session& s, arguments args, std::string& out) { ttl_generic(s, args, true, false, out); }

void expiretime(session& s, arguments args, std::string& out) {
    ttl_generic(s, args, false, true, out);
}

void pexpiretime(session& s, arguments args, std::string& out) {
    ttl_generic(s, args, true, true, out);
}

void persist(session& s, arguments args, std::string& out) {
    bool had = s.db.find(args[1]) != nullptr && s.db.expiry(args[1]).has_value();
    if (had) s.db.expire(args[1], std::nullopt);
    resp::append_integer(out, had ? 1 : 0);
}

void key_type(session& s, arguments args, std::string& out) {
    resp::append_simple_string(out, s.db.find(args[1]) ? "string" : "none");
}

/// Redis's glob (its stringmatchlen): `*`, `?`, `[abc]`, `[^a-z]`, `\` escapes; case-sensitive.
/// `pattern` must be null-terminated past its end, as Redis reads one byte beyond. Like Redis
/// since its fix for CVE-2024-31228, a pattern nesting more than 1000 stars matches nothing, so a
/// client's pattern cannot exhaust the stack.
bool glob_match(const char* pattern, int pattern_len, const char* text, int text_len,
                bool& skip_longer, int nesting = 0) {
    if (nesting > 1000) return false;
    while (pattern_len > 0 && text_len > 0) {
        switch (pattern[0]) {
            case '*':
                while (pattern_len > 0 && pattern[1] == '*') {
                    ++pattern;
                    --pattern_len;
                }
                if (pattern_len == 1) return true;
                while (text_len > 0) {
                    if (glob_match(pattern + 1, pattern_len - 1, text, text_len, skip_longer,
                                   nesting + 1)) {
                        return true;
                    }
                    if (skip_longer) return false;
                    ++text;
                    --text_len;
                }
                skip_longer = true;
                return false;
            case '?':
                ++text;
                --text_len;
                break;
            case '[': {
                ++pattern;
                --pattern_len;
                bool negate = pattern[0] == '^';
                if (negate) {
                    ++pattern;
                    --pattern_len;
                }
                bool match = false;
                for (;;) {
                    if (pattern[0] == '\\' && pattern_len >= 2) {
                        ++pattern;
                        --pattern_len;
                        if (pattern[0] == text[0]) match = true;
                    } else if (pattern[0] == ']') {
                        break;
                    } else if (pattern_len == 0) {
                        --pattern;
                        ++pattern_len;
                        break;
                    } else if (pattern_len >= 3 && pattern[1] == '-') {
                        int low = static_cast<unsigned char>(pattern[0]);
                        int high = static_cast<unsigned char>(pattern[2]);
                        int c = static_cast<unsigned char>(text[0]);
                        if (low > high) std::swap(low, high);
                        pattern += 2;
                        pattern_len -= 2;
                        if (c >= low && c <= high) match = true;
                    } else if (pattern[0] == text[0]) {
                        match = true;
                    }
                    ++pattern;
                    --pattern_len;
                }
                if (negate) match = !match;
                if (!match) return false;
                ++text;
                --text_len;
                break;
            }
            case '\\':
                if (pattern_len >= 2) {
                    ++pattern;
                    --pattern_len;
                }
                [[fallthrough]];
            default:
                if (pattern[0] != text[0]) return false;
                ++text;
                --text_len;
                break;
        }
        ++pattern;
        --pattern_len;
        if (text_len == 0) {
            while (*pattern == '*') {
                ++pattern;
                --pattern_len;
            }
            break;
        }
    }
    return pattern_len == 0 && text_len == 0;
}

/// Whether `key` matches the glob `pattern` (a null-terminated copy of the argument).
bool matches(const std::string& pattern, std::string_view key) {
    if (pattern == "*") return true;
    if (pattern.size() > INT_MAX || key.size() > INT_MAX) return false;
    bool skip_longer = false;
    return glob_match(pattern.c_str(), static_cast<int>(pattern.size()), key.data(),
                      static_cast<int>(key.size()), skip_longer);
}

void keys(session& s, arguments args, std::string& out) {
    auto pattern = c_string(args[1]);
    std::vector<std::string_view> found;
    s.db.for_each_key([&](std::string_view key) {
        if (matches(pattern, key)) found.push_back(key);
    });
    resp::append_array_header(out, found.size());
    for (auto key : found) resp::append_bulk_string(out, key);
}

// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]
//
// The cursor is a position in the order of the keys' hashes: a call returns the keys whose hashes
// are the next ones from the cursor on, and the cursor after the last of them. So every key that
// exists for the whole scan is returned, whatever is added or removed meanwhile (a key may come
// twice only if it is deleted and re-added). Each call looks at every key: a call costs the size
// of the store, and returns at least 1/256 of it, so a whole scan costs at most 256 passes.
void scan(session& s, arguments args, std::string& out) {
    auto cursor_text = c_string(args[1]);
    char* end = nullptr;
    errno = 0;
    unsigned long cursor = std::strtoul(cursor_text.c_str(), &end, 10);
    if (std::isspace(static_cast<unsigned char>(cursor_text[0])) || *end != '\0' ||
        errno == ERANGE) {
        return resp::append_error(out, "ERR invalid cursor");
    }
    std::int64_t count = 10;
    std::optional<std::string> pattern;
    std::optional<std::string_view> type_name;
    for (std::size_t i = 2; i < args.size(); i += 2) {
        bool has_value = i + 1 < args.size();
        if (iequals(args[i], "COUNT") && has_value) {
            auto parsed = integer_or_reply(args[i + 1], out);
            if (!parsed) return;
            if (*parsed < 1) return syntax_error(out);
            count = *parsed;
        } else if (iequals(args[i], "MATCH") && has_value) {
            pattern = c_string(args[i + 1]);
        } else if (iequals(args[i], "TYPE") && has_value) {
            type_name = args[i + 1];
        } else {
            return syntax_error(out);
        }
    }
    std::vector<std::pair<std::uint64_t, std::string_view>> ahead;  // from the cursor on
    s.db.for_each_key([&](std::string_view key) {
        std::uint64_t h = key_hash{}(key);
        if (h >= cursor) ahead.emplace_back(h, key);
    });
    auto wanted = std::max<std::uint64_t>(static_cast<std::uint64_t>(count), s.db.size() / 256);
    std::uint64_t next = 0;
    if (ahead.size() > wanted) {
        auto nth = ahead.begin() + static_cast<std::ptrdiff_t>(wanted - 1);
        std::nth_element(ahead.begin(), nth, ahead.end());
        auto last = nth->first;
        // Every key of the last hash goes in this batch, so the next cursor skips none.
        auto later = std::partition(ahead.begin(), ahead.end(),
                                    [&](const auto& e) { return e.first <= last; });
        if (later != ahead.end()) next = last + 1;
        ahead.erase(later, ahead.end());
    }
    std::erase_if(ahead, [&](auto& e) {
        return (pattern && !matches(*pattern, e.second)) ||
               (type_name && !iequals(*type_name, "string"));
    });
    resp::append_array_header(out, 2);
    resp::append_bulk_string(out, std::to_string(next));
    resp::append_array_header(out, ahead.size());
    for (const auto& e : ahead) resp::append_bulk_string(out, e.second);
}

// RENAME and RENAMENX: the value moves with its expiry time.
void rename_generic(session& s, arguments args, bool nx, std::string& out) {
    if (s.db.find(args[1]) == nullptr) return resp::append_error(out, "ERR no such key");
    if (args[1] == args[2]) {
        return nx ? resp::append_integer(out, 0) : resp::append_simple_string(out, "OK");
    }
    if (nx && s.db.find(args[2]) != nullptr) return resp::append_integer(out, 0);
    s.db.rename(args[1], args[2]);
    nx ? resp::append_integer(out, 1) : resp::append_simple_string(out, "OK");
}

void rename_key(session& s, arguments args, std::string& out) {
    rename_generic(s, args, false, out);
}

void renamenx(session& s, arguments args, std::string& out) { rename_generic(s, args, true, out); }

void randomkey(session& s, arguments, std::string& out) {
    auto key = s.db.random_key(s.server.random);
    if (!key) return resp::append_null_bulk_string(out);
    resp::append_bulk_string(out, *key);
}

// SELECT index: kv has one database, 0.
void select_db(session&, arguments args, std::string& out) {
    auto index = integer_or_reply(args[1], out);
    if (!index) return;
    if (*index < std::numeric_limits<std::int32_t>::min() ||
        *index > std::numeric_limits<std::int32_t>::max()) {
        return resp::append_error(
            out, "ERR value is out of range, value must between -2147483648 and 2147483647");
    }
    if (*index != 0) return resp::append_error(out, "ERR DB index is out of range");
    resp::append_simple_string(out, "OK");
}

void dbsize(session& s, arguments, std::string& out) {
    resp::append_integer(out, static_cast<std::int64_t>(s.db.size()));
}

// FLUSHALL and FLUSHDB [ASYNC | SYNC]: the same, with one database.
void flushall(session& s, arguments args, std::string& out) {
    if (args.size() > 2 ||
        (args.size() == 2 && !iequals(args[1], "ASYNC") && !iequals(args[1], "SYNC"))) {
        return syntax_error(out);
    }
    s.db.clear();
    resp::append_simple_string(out, "OK");
}

void server_time(session&, arguments, std::string& out) {
    auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(since_epoch).count();
    resp::append_array_header(out, 2);
    resp::append_bulk_string(out, std::to_string(us / 1000000));
    resp::append_bulk_string(out, std::to_string(us % 1000000));
}

// INFO [section ...]: the Server and Clients sections, with the fields clients read.
void info(session& s, arguments args, std::string& out) {
    bool server = args.size() == 1;
    bool clients = args.size() == 1;
    for (auto section : args.subspan(1)) {
        bool every = iequals(section, "default") || iequals(section, "all") ||
                     iequals(section, "everything");
        server = server || every || iequals(section, "server");
        clients = clients || every || iequals(section, "clients");
    }
    std::string text;
    if (server) {
        utsname name{};
        ::uname(&name);
        auto now = now_ms();
        auto uptime = (now - s.server.started_ms) / 1000;
        text += "# Server\r\n";
        text += "redis_version:" + std::string(emulated_version) + "\r\n";
        text += "redis_mode:standalone\r\n";
        text +=
            std::string("os:") + name.sysname + " " + name.release + " " + name.machine + "\r\n";
        text += "arch_bits:" + std::to_string(sizeof(void*) * 8) + "\r\n";
        text += "process_id:" + std::to_string(::getpid()) + "\r\n";
        text += "tcp_port:" + std::to_string(s.server.port) + "\r\n";
        text += "server_time_usec:" + std::to_string(now * 1000) + "\r\n";
        text += "uptime_in_seconds:" + std::to_string(uptime) + "\r\n";
        text += "uptime_in_days:" + std::to_string(uptime / 86400) + "\r\n";
        text += "hz:10\r\n";  // the expiry sweep's rate
        text += "config_file:\r\n";
    }
    if (clients) {
        if (!text.empty()) text += "\r\n";
        text += "# Clients\r\n";
        text += "connected_clients:" + std::to_string(s.server.clients) + "\r\n";
        text += "blocked_clients:0\r\n";
        text += "tracking_clients:0\r\n";
    }
    resp::append_bulk_string(out, text);
}

// HELLO [protover [AUTH user password] [SETNAME name]]: RESP2 only.
void hello(session& s, arguments args, std::string& out) {
    std::size_t next = 1;
    if (args.size() >= 2) {
        auto version = resp::parse_integer(args[next++]);
        if (!version) {
            return resp::append_error(out,
                                      "ERR Protocol version is not an integer or out of range");
        }
        if (*version != 2) return resp::append_error(out, "NOPROTO unsupported protocol version");
    }
    for (std::size_t i = next; i < args.size(); ++i) {
        auto more = args.size() - 1 - i;
        if (iequals(args[i], "AUTH") && more >= 2) {
            // No passwords: like Redis's default user, which takes any.
            if (args[i + 1] != "default") {
                return resp::append_error(
                    out, "WRONGPASS invalid username-password pair or user is disabled.");
            }
            i += 2;
        } else if (iequals(args[i], "SETNAME") && more >= 1) {
            auto name = args[++i];
            if (std::ranges::any_of(name, [](char c) { return c < '!' || c > '~'; })) {
                return resp::append_error(
                    out, "ERR Client names cannot contain spaces, newlines or special characters.");
            }
        } else {
            return resp::append_error(
                out, "ERR Syntax error in HELLO option '" + c_string(args[i]) + "'");
        }
    }
    resp::append_array_header(out, 14);
    resp::append_bulk_string(out, "server");
    resp::append_bulk_string(out, "redis");
    resp::append_bulk_string(out, "version");
    resp::append_bulk_string(out, emulated_version);
    resp::append_bulk_string(out, "proto");
    resp::append_integer(out, 2);
    resp::append_bulk_string(out, "id");
    resp::append_integer(out, s.client_id);
    resp::append_bulk_string(out, "mode");
    resp::append_bulk_string(out, "standalone");
    resp::append_bulk_string(out, "role");
    resp::append_bulk_string(out, "master");
    resp::append_bulk_string(out, "modules");
    resp::append_array_header(out, 0);
}

void command_count(std::string& out);

// COMMAND: redis-cli asks for `COMMAND DOCS` to offer hints; an empty answer means "none".
void command(session&, arguments args, std::string& out) {
    if (args.size() == 2 && iequals(args[1], "COUNT")) return command_count(out);
    resp::append_array_header(out, 0);
}

// CONFIG GET: redis-benchmark asks for `save` and `appendonly` before it starts.
void config(session&, arguments args, std::string& out) {
    if (!iequals(args[1], "GET")) {
        return resp::append_error(
            out, "ERR unknown subcommand '" + std::string(args[1]) + "'. Try CONFIG HELP.");
    }
    if (args.size() < 3) return wrong_arity("config|get", out);
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
    void (*run)(session&, arguments, std::string&);
};

constexpr std::array commands{
    command_spec{"get", 2, get},
    command_spec{"set", -3, set},
    command_spec{"ping", -1, ping},
    command_spec{"incr", 2, incr},
    command_spec{"mget", -2, mget},
    command_spec{"mset", -3, mset},
    command_spec{"del", -2, del},
    command_spec{"exists", -2, exists},
    command_spec{"echo", 2, echo},
    command_spec{"decr", 2, decr},
    command_spec{"incrby", 3, incrby},
    command_spec{"decrby", 3, decrby},
    command_spec{"incrbyfloat", 3, incrbyfloat},
    command_spec{"setnx", 3, setnx},
    command_spec{"setex", 4, setex},
    command_spec{"psetex", 4, psetex},
    command_spec{"getset", 3, getset},
    command_spec{"getdel", 2, getdel},
    command_spec{"getex", -2, getex},
    command_spec{"append", 3, append},
    command_spec{"strlen", 2, string_length},
    command_spec{"getrange", 4, getrange},
    command_spec{"setrange", 4, setrange},
    command_spec{"msetnx", -3, msetnx},
    command_spec{"expire", -3, expire},
    command_spec{"pexpire", -3, pexpire},
    command_spec{"expireat", -3, expireat},
    command_spec{"pexpireat", -3, pexpireat},
    command_spec{"ttl", 2, ttl},
    command_spec{"pttl", 2, pttl},
    command_spec{"expiretime", 2, expiretime},
    command_spec{"pexpiretime", 2, pexpiretime},
    command_spec{"persist", 2, persist},
    command_spec{"type", 2, key_type},
    command_spec{"keys", 2, keys},
    command_spec{"scan", -2, scan},
    command_spec{"rename", 3, rename_key},
    command_spec{"renamenx", 3, renamenx},
    command_spec{"randomkey", 1, randomkey},
    command_spec{"select", 2, select_db},
    command_spec{"dbsize", 1, dbsize},
    command_spec{"flushdb", -1, flushall},
    command_spec{"flushall", -1, flushall},
    command_spec{"time", 1, server_time},
    command_spec{"info", -1, info},
    command_spec{"hello", -1, hello},
    command_spec{"command", -1, command},
    command_spec{"config", -2, config},
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
void execute(session& s, arguments args, std::string& out) {
    auto spec = std::ranges::find_if(commands, [&](auto& c) { return iequals(c.name, args[0]); });
    if (spec == commands.end()) return unknown_command(args, out);
    auto count = args.size();
    if (spec->arity > 0 ? count != static_cast<std::size_t>(spec->arity)
                        : count < static_cast<std::size_t>(-spec->arity)) {
        return wrong_arity(spec->name, out);
    }
    spec->run(s, args, out);
}

/// The next size of a full read buffer of `size` bytes, when the request needs `wanted` in all.
///
/// It grows with what has arrived, by half to double, and never by a length the client merely
/// claims: `wanted` only stops the growth short of doubling when the request needs less.
std::size_t grown_size(std::size_t size, std::size_t wanted) {
    return std::min({std::max(size + size / 2, wanted), size * 2, max_buffer});
}

/// Reads what has arrived into `buf`; 0 once the client has closed its side (read_some: no
/// exception) or the server drains while it waits between commands.
netloop::task<std::size_t> read_some(netloop::connection& conn, std::span<char> buf) {
    try {
        co_return co_await conn.read_some(std::as_writable_bytes(buf), idle_timeout);
    } catch (const netloop::error& e) {
        if (e.kind() != netloop::errc::connection_closed) throw;
    }
    co_return 0;
}

/// Serves one client until it quits, closes, breaks the protocol, or the server drains while it
/// waits between commands.
netloop::task<> serve_client(netloop::connection conn, session& s) {
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
                if (used - done + resume.arguments * sizeof(std::string_view) > max_buffer) {
                    co_return;
                }
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
                execute(s, request.args, replies);
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
        // Where commands begin, for a drain: with part of one in the buffer the client is in the
        // middle of a command, and the server waits for the rest; otherwise between commands.
        if (used > 0) {
            conn.begin_message();
        } else {
            conn.end_message();
        }
        if (buffer.size() > initial_buffer && used <= initial_buffer) {
            buffer.resize(initial_buffer);
            buffer.shrink_to_fit();
        }
        if (replies.capacity() > flush_threshold * 4) std::string().swap(replies);
    }
}

/// Serves one client; whatever ends it (reset, a stuck reader, the server stopping) ends only it.
/// Over `maxclients`, like Redis, it answers an error and closes.
netloop::task<> client(netloop::connection conn, store& db, server_state& server) {
    if (server.clients >= server.max_clients) {
        try {
            co_await conn.write(std::string_view("-ERR max number of clients reached\r\n"),
                                write_timeout);
        } catch (const netloop::error&) {
        }
        co_return;
    }
    session s{db, server, server.next_client_id++};
    ++server.clients;
    try {
        co_await serve_client(std::move(conn), s);
    } catch (const netloop::error&) {
        // Nothing to tell: the client is gone, or was idle when the server stopped.
    }
    --server.clients;
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

/// The command line: `[host:port] [--maxclients N] [--timeout S]`. A bad one is a line on
/// stderr and exit status 2.
struct options {
    std::string at = "127.0.0.1:6379";
    std::size_t max_clients = 10000;
    netloop::duration timeout = netloop::no_timeout;
};

std::optional<options> parse_options(int argc, char** argv) {
    options o;
    auto number = [](const char* flag, const char* text) -> std::optional<long long> {
        char* end = nullptr;
        errno = 0;
        long long v = std::strtoll(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0' || v < 0) {
            std::fprintf(stderr, "kv: %s takes a whole number >= 0, not '%s'\n", flag, text);
            return std::nullopt;
        }
        return v;
    };
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if ((arg == "--maxclients" || arg == "--timeout") && i + 1 < argc) {
            auto v = number(argv[i], argv[i + 1]);
            if (!v) return std::nullopt;
            if (arg == "--maxclients") {
                if (*v == 0) {
                    std::fprintf(stderr, "kv: --maxclients must be at least 1\n");
                    return std::nullopt;
                }
                o.max_clients = static_cast<std::size_t>(*v);
            } else if (*v > 0) {
                o.timeout = std::chrono::seconds(*v);
            }
            ++i;
        } else if (!arg.starts_with("--") && i == 1) {
            o.at = arg;
        } else {
            std::fprintf(stderr,
                         "kv: unknown argument '%s' (usage: kv [host:port] "
                         "[--maxclients N] [--timeout S])\n",
                         argv[i]);
            return std::nullopt;
        }
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    auto opts = parse_options(argc, argv);
    if (!opts) return 2;
    store db;  // these two outlive run(), so no client task can see them destroyed
    server_state state;
    state.max_clients = opts->max_clients;
    // A startup error (a bad address, the port in use) is "kv: <what>" on stderr and status 1.
    // SIGINT/SIGTERM cancel the task: serve() drains (see the top of this file), then kv exits 0.
    return netloop::run([&]() -> netloop::task<> {
        auto server = netloop::server::listen(netloop::address::parse(opts->at));
        state.port = server.local_port();
        netloop::announce(server);
        netloop::spawn(remove_expired_keys(db));
        netloop::connection_handler handler = [&](netloop::connection conn) {
            return client(std::move(conn), db, state);
        };
        // A client in the middle of a command gets 30 s to finish it once the drain begins.
        co_await server.serve(handler, {.idle_timeout = opts->timeout, .drain_timeout = 30s});
    });
}
