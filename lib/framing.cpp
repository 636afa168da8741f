// SPDX-License-Identifier: MIT
// Framing: the connection's read buffer, read_until, read_exactly, fill, buffered, consume.
#include "framing.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

#include <netloop/connection.hpp>

#include "connection_impl.hpp"

namespace netloop {
namespace detail {

std::span<const std::byte> connection_impl::buffered() const noexcept {
    auto from = read_begin + pending_consume;
    return {read_buffer.data() + from, read_end - from};
}

void connection_impl::settle() noexcept {
    read_begin += pending_consume;
    pending_consume = 0;
    if (read_begin == read_end) read_begin = read_end = 0;
}

void connection_impl::consume(std::size_t n) noexcept {
    settle();
    read_begin += std::min(n, read_end - read_begin);
    if (read_begin == read_end) read_begin = read_end = 0;
}

std::size_t connection_impl::take_buffered(std::span<std::byte> out) noexcept {
    auto from = buffered();
    std::size_t n = std::min(out.size(), from.size());
    std::copy_n(from.begin(), n, out.begin());
    consume(n);
    return n;
}

namespace {

// The start of every read call: the frame handed out last is consumed (its view ends here, as
// documented), and a buffer that a burst grew is given back once it is empty.
void start_read(connection_impl& c) noexcept {
    c.settle();
    if (c.read_end == 0 && c.read_buffer.size() > 65536)
        std::vector<std::byte>().swap(c.read_buffer);
}

// Room for at least one more byte after the buffered ones, up to `max_buffered` in all.
std::span<std::byte> room_to_fill(connection_impl& c, std::size_t max_buffered) {
    std::size_t have = c.read_end - c.read_begin;
    if (have >= max_buffered) {
        throw error(errc::message_too_large,
                    c.describe("read") + " (" + std::to_string(have) + " bytes buffered)");
    }
    if (c.read_end == c.read_buffer.size()) {
        if (c.read_begin > 0) {
            std::copy(c.read_buffer.begin() + static_cast<std::ptrdiff_t>(c.read_begin),
                      c.read_buffer.begin() + static_cast<std::ptrdiff_t>(c.read_end),
                      c.read_buffer.begin());
            c.read_end -= c.read_begin;
            c.read_begin = 0;
        }
        if (c.read_end == c.read_buffer.size()) {
            c.read_buffer.resize(std::max<std::size_t>(4096, c.read_buffer.size() * 2));
        }
    }
    std::size_t room = std::min(c.read_buffer.size() - c.read_end, max_buffered - have);
    return std::span(c.read_buffer).subspan(c.read_end, room);
}

// What is left of `until` for the next read of a longer call; the first read gets the whole
// timeout, and its deadline becomes `until`.
duration left(clock::time_point until) {
    if (until == never) return no_timeout;
    return std::max(duration::zero(), until - clock::now());
}

}  // namespace
}  // namespace detail

task<std::size_t> connection::fill(duration timeout, std::size_t max_buffered) {
    auto& c = *impl_;
    c.marks_boundaries = true;  // what a parser has not consumed yet stays buffered
    detail::start_read(c);
    auto room = detail::room_to_fill(c, max_buffered);
    if (c.closed) throw error(errc::connection_closed, c.describe("read"));
    if (c.drain_ends_read()) throw c.drained_error("read");
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    detail::operation op(c, c.reader, timeout, slot);
    auto [ec, n] =
        co_await c.stream.async_read_some(asio::buffer(room.data(), room.size()), op.token());
    if (ec) throw c.failure("read", ec, c.reader);
    c.count_read(n);
    c.read_end += n;
    co_return n;
}

task<> connection::read_exactly(std::span<std::byte> buf, duration timeout) {
    auto& c = *impl_;
    c.marks_boundaries = true;
    detail::start_read(c);
    std::size_t got = c.take_buffered(buf);
    auto until = detail::never;
    bool first = true;
    auto slot = (co_await asio::this_coro::cancellation_state).slot();
    // From its first byte to its last the call is inside a message: a drain lets it finish.
    while (got < buf.size()) {
        if (c.closed) throw error(errc::connection_closed, c.describe("read"));
        c.frame_open = got > 0;
        if (!c.frame_open && c.drain_ends_read()) throw c.drained_error("read");
        detail::operation op(c, c.reader, first ? timeout : detail::left(until), slot);
        if (first) until = c.reader.at;
        first = false;
        auto rest = buf.subspan(got);
        auto [ec, n] =
            co_await c.stream.async_read_some(asio::buffer(rest.data(), rest.size()), op.token());
        if (ec) throw c.failure("read", ec, c.reader);
        c.count_read(n);
        got += n;
    }
    c.frame_open = false;
}

task<std::string_view> connection::read_until(std::string_view delimiter, std::size_t max_length,
                                              duration timeout) {
    auto& c = *impl_;
    if (delimiter.empty()) {
        throw error(errc::invalid_argument, c.describe("read_until") + " (empty delimiter)");
    }
    c.marks_boundaries = true;
    detail::start_read(c);
    auto until = detail::never;
    bool first = true;
    std::size_t searched = 0;
    for (;;) {
        auto view = c.buffered();
        std::string_view text(reinterpret_cast<const char*>(view.data()), view.size());
        auto found = detail::find_frame(text, searched, delimiter, max_length);
        if (found.result == detail::frame_search::found) {
            c.pending_consume = found.length + delimiter.size();
            co_return text.substr(0, found.length);
        }
        if (found.result == detail::frame_search::too_large) {
            throw error(errc::message_too_large, c.describe("read_until") +
                                                     " (no delimiter within " +
                                                     std::to_string(max_length) + " bytes)");
        }
        searched = found.searched;
        auto room =
            detail::room_to_fill(c, max_length + std::min(delimiter.size(), SIZE_MAX - max_length));
        if (c.closed) throw error(errc::connection_closed, c.describe("read"));
        // A partial frame is buffered, so this wait is at a boundary only with nothing buffered.
        if (c.drain_ends_read()) throw c.drained_error("read_until");
        auto slot = (co_await asio::this_coro::cancellation_state).slot();
        detail::operation op(c, c.reader, first ? timeout : detail::left(until), slot);
        if (first) until = c.reader.at;
        first = false;
        auto [ec, n] =
            co_await c.stream.async_read_some(asio::buffer(room.data(), room.size()), op.token());
        if (ec) throw c.failure("read", ec, c.reader);
        c.count_read(n);
        c.read_end += n;
    }
}

std::span<const std::byte> connection::buffered() const noexcept { return impl_->buffered(); }

void connection::consume(std::size_t n) noexcept { impl_->consume(n); }

}  // namespace netloop
