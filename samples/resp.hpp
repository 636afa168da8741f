// SPDX-License-Identifier: MIT
// resp: the Redis protocol (RESP2) for the kv sample, a request parser over bytes and reply
// encoders.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

/// RESP2, the protocol of Redis, as a pure function over bytes: no I/O, no state, so a server
/// feeds it whatever it has read and a fuzzer feeds it anything.
///
/// A request is a multibulk (`*2\r\n$3\r\nGET\r\n$1\r\na\r\n`) or an inline command
/// (`GET a\r\n`, what a person types into `nc`). Inline arguments are split on blanks and may be
/// quoted as Redis quotes them: `"a b\x41\n"` with backslash escapes, `'a b'` literally.
namespace resp {

/// The longest bulk string a request may carry: Redis's `proto-max-bulk-len` (512 MiB).
inline constexpr std::size_t max_bulk_length = std::size_t{512} * 1024 * 1024;

/// The most arguments one multibulk request may claim: Redis's INT_MAX. What bounds the memory a
/// request takes is the server's limit on its buffered bytes, not this count.
inline constexpr std::size_t max_arguments = std::numeric_limits<std::int32_t>::max();

/// The longest inline request, and the longest `*<count>` or `$<length>` line: Redis's
/// `PROTO_INLINE_MAX_SIZE` (64 KiB).
inline constexpr std::size_t max_line_length = std::size_t{64} * 1024;

/// What `parse` found at the start of its input.
enum class status {
    incomplete,  ///< the bytes so far are the valid beginning of a request: read more
    complete,    ///< one whole request
    error,       ///< bytes no request can start with: answer the error and close
};

/// How far `parse` got into an unfinished multibulk request: the whole arguments it checked.
///
/// Passing it back to `parse` with the same bytes, and more after them, resumes there instead of
/// parsing those arguments again; a request of many arguments arriving in many reads then costs
/// its length, not its length times the number of reads.
struct progress {
    std::size_t offset = 0;     ///< the bytes checked so far (0: start from the beginning)
    std::size_t arguments = 0;  ///< how many whole arguments those bytes hold
};

/// The result of `parse`.
struct request {
    /// Which of the three outcomes this is.
    status state = status::incomplete;

    /// For `complete`: the command and its arguments, views into the parser's input (so valid as
    /// long as those bytes are) or, for a quoted inline argument, into `unquoted`. Empty for a
    /// blank inline line or a count of 0 or less (`*0`, `*-1`), which Redis skips.
    std::vector<std::string_view> args;

    /// The bytes of quoted inline arguments after their quotes and escapes are undone; `args`
    /// points into it, so a request may be moved but not copied.
    std::vector<char> unquoted;

    /// For `complete`: how many bytes of the input the request took.
    std::size_t consumed = 0;

    /// For `incomplete`: the result cannot change before the input is at least this long, so
    /// the caller may wait for that many bytes before parsing again. Inside a bulk string it
    /// follows from the length the peer claims: a hint for when to parse, never a size to
    /// allocate.
    std::size_t wanted = 0;

    /// For `incomplete`: where to resume (see `progress`).
    progress resume;

    /// For `error`: what is wrong, in Redis's words, e.g. `invalid bulk length`. The reply is
    /// `-ERR Protocol error: <error>`.
    std::string error;
};

/// A decimal 64-bit integer in Redis's strict syntax (its `string2ll`): an optional `-`, digits,
/// no `+`, no leading zeros, no blanks; empty if `text` is anything else or overflows. Lengths
/// and counts in requests are read with it, and so are INCR's values.
inline std::optional<std::int64_t> parse_integer(std::string_view text) {
    if (text.empty() || text.size() > 20) return std::nullopt;
    bool negative = text.front() == '-';
    std::string_view digits = negative ? text.substr(1) : text;
    if (digits.empty() || digits.front() < '0' || digits.front() > '9') return std::nullopt;
    if (digits.front() == '0' && (digits.size() > 1 || negative)) return std::nullopt;
    std::int64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

namespace detail {

/// A `\r\n`-terminated line starting at `pos`: its text and where the next line starts.
struct line {
    status state = status::incomplete;
    bool too_long = false;  ///< for `error`: longer than `max_line_length` (else: CR without LF)
    std::string_view text;
    std::size_t next = 0;
};

/// Finds the line at `pos`, at most `max_line_length` long. A line that is too long is an error
/// as soon as `max_line_length + 1` bytes have arrived without its end, so the answer never
/// depends on how the bytes were split into reads.
inline line read_line(std::string_view in, std::size_t pos) {
    std::string_view rest = in.substr(pos);
    std::string_view window = rest.substr(0, max_line_length + 1);
    auto cr = window.find('\r');
    if (cr == std::string_view::npos) {
        if (window.size() > max_line_length) return {status::error, true, {}, 0};
        return {};
    }
    if (cr + 1 == rest.size()) return {};
    if (rest[cr + 1] != '\n') return {status::error, false, {}, 0};
    return {status::complete, false, rest.substr(0, cr), pos + cr + 2};
}

inline request failure(std::string message) {
    request r;
    r.state = status::error;
    r.error = std::move(message);
    return r;
}

inline request need(std::size_t wanted, progress resume = {}) {
    request r;
    r.wanted = wanted;
    r.resume = resume;
    return r;
}

inline request parse_multibulk(std::string_view in, progress from) {
    auto header = read_line(in, 0);
    if (header.state == status::incomplete) return need(in.size() + 1);
    if (header.state == status::error) {
        return failure(header.too_long ? "too big mbulk count string" : "invalid multibulk length");
    }
    auto count = resp::parse_integer(header.text.substr(1));
    if (!count || *count > static_cast<std::int64_t>(max_arguments)) {
        return failure("invalid multibulk length");
    }
    if (*count <= 0) {  // Redis skips the request: `*0`, `*-1` and `*-10` alike
        request skipped;
        skipped.state = status::complete;
        skipped.consumed = header.next;
        return skipped;
    }
    // Resuming, the arguments before `from` are known to be whole: check only the rest, and
    // collect views into a fresh pass once the request is complete.
    bool resuming = from.offset > header.next && from.offset <= in.size() &&
                    from.arguments < static_cast<std::size_t>(*count);
    std::size_t pos = resuming ? from.offset : header.next;
    std::size_t done = resuming ? from.arguments : 0;
    request r;
    // Reserve for what may have arrived, never for what the peer claims.
    if (!resuming) r.args.reserve(std::min<std::size_t>(static_cast<std::size_t>(*count), 16));
    for (; done < static_cast<std::size_t>(*count); ++done) {
        if (pos == in.size()) return need(pos + 1, {pos, done});
        if (in[pos] != '$') return failure(std::string("expected '$', got '") + in[pos] + "'");
        auto length_line = read_line(in, pos);
        if (length_line.state == status::incomplete) return need(in.size() + 1, {pos, done});
        if (length_line.state == status::error) {
            return failure(length_line.too_long ? "too big bulk count string"
                                                : "invalid bulk length");
        }
        auto length = resp::parse_integer(length_line.text.substr(1));
        if (!length || *length < 0 || static_cast<std::uint64_t>(*length) > max_bulk_length) {
            return failure("invalid bulk length");
        }
        auto size = static_cast<std::size_t>(*length);
        std::size_t end = length_line.next + size;  // where the bulk's \r\n must be
        if (in.size() < end + 2) return need(end + 2, {pos, done});
        if (in[end] != '\r' || in[end + 1] != '\n') {
            return failure("bulk data not followed by CRLF");
        }
        if (!resuming) r.args.push_back(in.substr(length_line.next, size));
        pos = end + 2;
    }
    if (resuming) return parse_multibulk(in, {});
    r.state = status::complete;
    r.consumed = pos;
    return r;
}

// What Redis's sdssplitargs skips between arguments (C's isspace), and what ends an unquoted one.
inline bool is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

inline bool ends_unquoted(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

inline int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// Splits an inline line into arguments as Redis's sdssplitargs does: blanks separate them;
/// inside `"..."` the escapes `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<any>` apply; inside
/// `'...'` only `\'`; a closing quote must be followed by a blank or the end. False for
/// unbalanced quotes. Quoted arguments are written to `unquoted`, which has room for the line.
inline bool split_inline(std::string_view text, request& r) {
    std::size_t i = 0;
    for (;;) {
        while (i < text.size() && is_blank(text[i])) ++i;
        if (i == text.size()) return true;
        std::size_t start = i;
        while (i < text.size() && !ends_unquoted(text[i]) && text[i] != '"' && text[i] != '\'') {
            ++i;
        }
        if (i == text.size() || ends_unquoted(text[i])) {
            r.args.push_back(text.substr(start, i - start));
            continue;
        }
        // A quote: this argument is rebuilt in `unquoted`, from its unquoted beginning on.
        auto first = r.unquoted.size();
        r.unquoted.insert(r.unquoted.end(), text.begin() + static_cast<std::ptrdiff_t>(start),
                          text.begin() + static_cast<std::ptrdiff_t>(i));
        bool done = false;
        while (!done) {
            if (i == text.size()) break;  // the end of an unquoted part ends the argument
            char c = text[i];
            if (ends_unquoted(c)) break;
            if (c != '"' && c != '\'') {
                r.unquoted.push_back(c);
                ++i;
                continue;
            }
            char quote = c;
            ++i;
            for (;;) {
                if (i == text.size()) return false;  // unbalanced
                char q = text[i];
                if (quote == '"' && q == '\\' && i + 3 < text.size() && text[i + 1] == 'x' &&
                    hex_value(text[i + 2]) >= 0 && hex_value(text[i + 3]) >= 0) {
                    r.unquoted.push_back(
                        static_cast<char>(hex_value(text[i + 2]) * 16 + hex_value(text[i + 3])));
                    i += 4;
                } else if (quote == '"' && q == '\\' && i + 1 < text.size()) {
                    char e = text[i + 1];
                    switch (e) {
                        case 'n':
                            e = '\n';
                            break;
                        case 'r':
                            e = '\r';
                            break;
                        case 't':
                            e = '\t';
                            break;
                        case 'b':
                            e = '\b';
                            break;
                        case 'a':
                            e = '\a';
                            break;
                        default:
                            break;
                    }
                    r.unquoted.push_back(e);
                    i += 2;
                } else if (quote == '\'' && q == '\\' && i + 1 < text.size() &&
                           text[i + 1] == '\'') {
                    r.unquoted.push_back('\'');
                    i += 2;
                } else if (q == quote) {
                    ++i;
                    if (i < text.size() && !is_blank(text[i])) return false;
                    done = true;
                    break;
                } else {
                    r.unquoted.push_back(q);
                    ++i;
                }
            }
        }
        r.args.emplace_back(r.unquoted.data() + first, r.unquoted.size() - first);
    }
}

inline request parse_inline(std::string_view in) {
    std::string_view window = in.substr(0, max_line_length + 1);
    auto newline = window.find('\n');
    if (newline == std::string_view::npos) {
        if (window.size() > max_line_length) return failure("too big inline request");
        return need(in.size() + 1);
    }
    request r;
    r.state = status::complete;
    r.consumed = newline + 1;
    std::string_view text = in.substr(0, newline);
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    // Views point into `unquoted`: reserve what the whole line could need, so it never moves.
    if (text.find_first_of("\"'") != std::string_view::npos) r.unquoted.reserve(text.size());
    if (!split_inline(text, r)) return failure("unbalanced quotes in request");
    return r;
}

}  // namespace detail

/// Parses the request at the start of `input`.
///
/// Returns `complete` with the arguments and the bytes consumed, `incomplete` if `input` is a
/// valid beginning that needs more bytes, or `error` with Redis's message. The result for a
/// prefix of some bytes is `incomplete` or the same as for all of them, however they were split.
/// `from` is the `resume` of an `incomplete` result for the same first bytes; it changes only
/// the work done, never the result. Allocates only for the arguments present in `input`, never
/// for a count or length it claims.
[[nodiscard]] inline request parse(std::string_view input, progress from = {}) {
    if (input.empty()) return detail::need(1);
    if (input.front() == '*') return detail::parse_multibulk(input, from);
    return detail::parse_inline(input);
}

/// Appends a simple string: `+OK\r\n`. `text` must not contain CR or LF.
inline void append_simple_string(std::string& out, std::string_view text) {
    out += '+';
    out += text;
    out += "\r\n";
}

/// Appends an error: `-ERR message\r\n`. `message` starts with its code (`ERR`); CR and LF in it
/// become spaces, as Redis does, so a peer's bytes quoted in an error cannot break the framing.
inline void append_error(std::string& out, std::string_view message) {
    out += '-';
    auto start = out.size();
    out += message;
    std::replace_if(
        out.begin() + static_cast<std::ptrdiff_t>(start), out.end(),
        [](char c) { return c == '\r' || c == '\n'; }, ' ');
    out += "\r\n";
}

/// Appends an integer: `:42\r\n`.
inline void append_integer(std::string& out, std::int64_t value) {
    char digits[24];
    char* end = std::to_chars(digits, digits + sizeof digits, value).ptr;
    out += ':';
    out.append(digits, static_cast<std::size_t>(end - digits));
    out += "\r\n";
}

/// Appends a bulk string: `$5\r\nhello\r\n`; any bytes.
inline void append_bulk_string(std::string& out, std::string_view bytes) {
    char digits[24];
    char* end = std::to_chars(digits, digits + sizeof digits, bytes.size()).ptr;
    out += '$';
    out.append(digits, static_cast<std::size_t>(end - digits));
    out += "\r\n";
    out += bytes;
    out += "\r\n";
}

/// Appends the null bulk string `$-1\r\n`: "no such key".
inline void append_null_bulk_string(std::string& out) { out += "$-1\r\n"; }

/// Appends an array header `*<count>\r\n`; the caller appends the `count` elements after it.
inline void append_array_header(std::string& out, std::size_t count) {
    char digits[24];
    char* end = std::to_chars(digits, digits + sizeof digits, count).ptr;
    out += '*';
    out.append(digits, static_cast<std::size_t>(end - digits));
    out += "\r\n";
}

/// Appends `args` as a multibulk request, the form redis-cli sends (for clients and tests).
inline void append_command(std::string& out, const std::vector<std::string_view>& args) {
    append_array_header(out, args.size());
    for (auto arg : args) append_bulk_string(out, arg);
}

}  // namespace resp
