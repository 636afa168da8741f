// SPDX-License-Identifier: MIT
// find_frame: the delimiter search behind read_until, pure so it can be fuzzed.
#pragma once

#include <cstddef>
#include <string_view>

namespace netloop::detail {

struct frame_search {
    enum result_kind { found, need_more, too_large };
    result_kind result;
    std::size_t length;    // found: the frame's length, without the delimiter
    std::size_t searched;  // need_more: where the next search may start (no delimiter before)
};

// Looks for `delimiter` in `text`, knowing none starts before `searched`. A frame longer than
// `max_length` is too large, found or not: once `max_length + delimiter.size()` bytes hold no
// delimiter, no later byte can make a frame that fits.
inline frame_search find_frame(std::string_view text, std::size_t searched,
                               std::string_view delimiter, std::size_t max_length) noexcept {
    auto at = text.find(delimiter, searched);
    if (at != std::string_view::npos) {
        if (at <= max_length) return {frame_search::found, at, 0};
        return {frame_search::too_large, 0, 0};
    }
    if (text.size() >= max_length && text.size() - max_length >= delimiter.size()) {
        return {frame_search::too_large, 0, 0};
    }
    auto next = text.size() >= delimiter.size() ? text.size() - delimiter.size() + 1 : 0;
    return {frame_search::need_more, 0, next};
}

}  // namespace netloop::detail
