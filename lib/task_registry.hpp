// SPDX-License-Identifier: MIT
// task_registry: the tasks spawned on a loop, each with its own cancellation signal.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>

#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/co_spawn.hpp>
#include <asio/post.hpp>

#include <netloop/task.hpp>

namespace netloop::detail {

class task_registry {
public:
    struct entry {
        asio::cancellation_signal signal;
        entry* prev = nullptr;
        entry* next = nullptr;
    };

    task_registry() = default;
    task_registry(const task_registry&) = delete;
    task_registry& operator=(const task_registry&) = delete;
    ~task_registry() {
        while (head_ != nullptr) release(head_);
    }

    entry* add() {
        auto* e = new entry;
        e->next = head_;
        if (head_ != nullptr) head_->prev = e;
        head_ = e;
        ++size_;
        return e;
    }

    // Unlinks `e` (it no longer counts) but keeps it alive.
    void remove(entry* e) noexcept {
        if (e->prev == nullptr && head_ != e) return;  // already removed
        if (e->prev != nullptr) e->prev->next = e->next;
        if (e->next != nullptr) e->next->prev = e->prev;
        if (head_ == e) head_ = e->next;
        e->prev = e->next = nullptr;
        --size_;
    }

    // Unlinks `e` if needed and hands over its ownership.
    std::unique_ptr<entry> release(entry* e) noexcept {
        remove(e);
        return std::unique_ptr<entry>(e);
    }

    void cancel_all() noexcept {
        // Emitting can complete a task inline, which unlinks its entry: walk a snapshot of next.
        for (entry* e = head_; e != nullptr;) {
            entry* following = e->next;
            e->signal.emit(asio::cancellation_type::terminal);
            e = following;
        }
    }

    [[nodiscard]] std::size_t size() const noexcept { return size_; }

    // Set once run()'s coroutine has ended: a task spawned from then on (a handler's lingering
    // close, say) is cancelled as soon as it starts, so run() still returns promptly.
    bool draining = false;
    // Set by ~loop: the io_context is going away, nothing may be spawned on it.
    bool destroying = false;
    // A thread is inside the loop's run(): other threads must post to it, not touch it.
    // Changed under `run_mutex`, so another thread can act on "not running" while holding it.
    std::atomic<bool> running{false};
    std::mutex run_mutex;

private:
    entry* head_ = nullptr;
    std::size_t size_ = 0;
};

// Starts `t` on `context` as a detached task tracked by `registry` (its entry's signal cancels
// it); `on_exit(exception_ptr)` runs when it ends, on the loop. The one way lib/ spawns.
template <typename OnExit>
void spawn_tracked(asio::io_context& context, task_registry& registry, task<> t, OnExit on_exit) {
    auto* entry = registry.add();
    try {
        asio::co_spawn(
            context, std::move(t),
            asio::bind_cancellation_slot(
                entry->signal.slot(),
                [&context, &registry, entry, on_exit = std::move(on_exit)](std::exception_ptr e) {
                    on_exit(e);
                    // The entry's signal is still referenced by co_spawn's frames while
                    // this handler runs; free it from a fresh handler.
                    registry.remove(entry);
                    asio::post(context, [owned = registry.release(entry)] {});
                }));
    } catch (...) {
        // Out of memory before the task started: it never runs, its frame is gone with `t`.
        registry.release(entry);
        throw;
    }
    if (registry.draining) entry->signal.emit(asio::cancellation_type::terminal);
}

}  // namespace netloop::detail
