// SPDX-License-Identifier: MIT
// signal_stream: a signal_set behind an awaitable next().
#include <asio/signal_set.hpp>

#include <netloop/error.hpp>
#include <netloop/signal_stream.hpp>

namespace netloop {

struct signal_stream::state {
    explicit state(loop& l) : signals(l.context()) {}
    asio::signal_set signals;
};

signal_stream::signal_stream(std::initializer_list<int> signals, loop& l)
    : state_(std::make_unique<state>(l)) {
    for (int signo : signals) {
        asio::error_code ec;
        state_->signals.add(signo, ec);
        if (ec) {
            throw error(errc::signal_failed, "watch signal " + std::to_string(signo), ec.value());
        }
    }
}

signal_stream::~signal_stream() = default;
signal_stream::signal_stream(signal_stream&&) noexcept = default;
signal_stream& signal_stream::operator=(signal_stream&&) noexcept = default;

task<int> signal_stream::next() {
    auto& signals = state_->signals;
    auto [ec, signo] = co_await signals.async_wait(detail::use_tuple);
    if (ec == asio::error::operation_aborted) throw error(errc::cancelled, "wait for signal");
    if (ec) throw error(errc::signal_failed, "wait for signal", ec.value());
    co_return signo;
}

}  // namespace netloop
