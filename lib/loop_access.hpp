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
    // Runs `f` on the calling thread if no thread runs `l`, holding the loop off until `f`
    // returns; false (and `f` not run) if a thread runs it: then only that thread may touch
    // the loop's objects.
    template <typename F>
    static bool if_not_running(loop& l, F&& f) {
        std::lock_guard lock(l.tasks_->run_mutex);
        if (l.tasks_->running) return false;
        f();
        return true;
    }
    static void set_running(loop& l, bool on) {
        std::lock_guard lock(l.tasks_->run_mutex);
        l.tasks_->running = on;
    }
};

}  // namespace netloop::detail
