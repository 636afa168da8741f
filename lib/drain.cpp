// SPDX-License-Identifier: MIT
// What a drain asks of one connection: is it idle between messages, and if so, end its read.
#include "connection_impl.hpp"

namespace netloop::detail {

// Idle means: a read pending with nothing buffered (a handler waiting for the start of a new
// message), no write pending, and no read begun since the previous look — so the peer sent
// nothing for the whole interval. A peer that streams completes reads all the time and never
// looks idle; one that pauses longer than the interval between two chunks would, which is why
// the interval (serve_options::drain_idle_grace) is the user's to set.
bool connection_impl::end_if_idle() noexcept {
    bool idle = !closed && reader.pending && !writer.pending && read_begin == read_end &&
                reads_begun == drain_mark;
    drain_mark = reads_begun;
    if (!idle) return false;
    drained = true;
    reader.signal.emit(asio::cancellation_type::terminal);
    return true;
}

}  // namespace netloop::detail
