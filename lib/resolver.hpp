// SPDX-License-Identifier: MIT
// Name lookups off the loop: getaddrinfo on a small shared pool of threads, each call bounded
// by its own deadline, a late answer discarded.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <sys/socket.h>
#include <vector>

namespace netloop::detail {

// One getaddrinfo, shared by the caller on a loop and a resolver thread. The thread touches
// nothing else: not the loop, not the caller's frame. It wakes the caller by writing to
// `wake_fd`, an eventfd the caller owns and closes only after abandon(), under `mutex`, so a
// lookup that ends after its caller (or the caller's loop) is gone writes nowhere.
struct lookup {
    lookup(std::string host, std::string service, int wake) noexcept
        : host(std::move(host)), service(std::move(service)), wake_fd(wake) {}

    const std::string host;
    const std::string service;

    std::mutex mutex;
    int wake_fd;            // -1 once abandoned
    bool finished = false;  // the fields below are set
    int status = 0;         // getaddrinfo's result: 0 or an EAI_* code
    int sys_errno = 0;      // errno for EAI_SYSTEM
    std::vector<sockaddr_storage> found;

    // The caller no longer waits: a later answer is dropped. Called before `wake_fd` closes.
    void abandon() noexcept;
    // Runs getaddrinfo (unless abandoned already) and wakes the caller. On a resolver thread.
    void run() noexcept;
};

// Queues `job` for a resolver thread. The pool grows on demand up to `max_resolver_threads`
// (a lookup then waits for a free thread, bounded by its caller's deadline) and a thread idle
// for a while ends. Throws std::system_error only if no resolver thread exists and none can be
// started.
void start_lookup(std::shared_ptr<lookup> job);

inline constexpr std::size_t max_resolver_threads = 16;

}  // namespace netloop::detail
