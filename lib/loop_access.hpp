// SPDX-License-Identifier: MIT
// What lib/ needs of a loop beyond its public API.
#pragma once

#include <memory>

#include <netloop/loop.hpp>

#include "task_registry.hpp"

namespace netloop::detail {

struct loop_access {
    // A loop whose reactor other threads register sockets with (hand_off targets).
    static std::unique_ptr<loop> make_shared_reactor() {
        return std::unique_ptr<loop>(new loop(true));
    }
    static task_registry& tasks(loop& l) noexcept { return *l.tasks_; }
    // False while the loop is being destroyed: nothing may be started on it any more.
    static bool accepts_tasks(loop& l) noexcept { return !l.tasks_->destroying; }
    // True while some thread runs the loop: then only that thread may touch its objects.
    static bool is_running(loop& l) noexcept { return l.tasks_->running; }
};

}  // namespace netloop::detail
