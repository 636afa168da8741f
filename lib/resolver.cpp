// SPDX-License-Identifier: MIT
// The resolver threads: getaddrinfo off the loop, one lookup per thread at a time.
#include "resolver.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <netdb.h>
#include <netinet/in.h>
#include <thread>
#include <unistd.h>

namespace netloop::detail {

void lookup::abandon() noexcept {
    std::lock_guard lock(mutex);
    wake_fd = -1;
}

void lookup::run() noexcept {
    {
        std::lock_guard lock(mutex);
        if (wake_fd < 0) return;  // the caller gave up while this waited in the queue
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* list = nullptr;
    int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
    int saved_errno = errno;
    std::vector<sockaddr_storage> addresses;
    try {
        for (auto* ai = list; rc == 0 && ai != nullptr; ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
            sockaddr_storage one{};
            std::memcpy(&one, ai->ai_addr, std::min<std::size_t>(ai->ai_addrlen, sizeof one));
            addresses.push_back(one);
        }
    } catch (...) {
        rc = EAI_MEMORY;
        addresses.clear();
    }
    if (list != nullptr) ::freeaddrinfo(list);

    std::lock_guard lock(mutex);
    status = rc;
    sys_errno = rc == EAI_SYSTEM ? saved_errno : 0;
    found = std::move(addresses);
    finished = true;
    if (wake_fd >= 0) {
        // An eventfd: an 8-byte counter that never blocks a writer short of 2^64 - 1.
        std::uint64_t one = 1;
        (void)!::write(wake_fd, &one, sizeof one);
    }
}

namespace {

// A thread per lookup in flight, up to max_resolver_threads: getaddrinfo blocks for as long as
// the name servers take (resolv.conf's timeout × attempts per server, seconds), so one hung
// lookup must not hold another, as it does behind Asio's one resolver thread per io_context;
// and a flood of lookups must not make a thread each. Past the cap a lookup waits in the queue.
// Threads are detached and the pool is never destroyed: a lookup may outlive every loop, and
// main() too.
class resolver_pool {
public:
    static resolver_pool& instance() {
        static auto* pool = new resolver_pool;  // never destroyed: see above
        return *pool;
    }

    void submit(std::shared_ptr<lookup> job) {
        std::unique_lock lock(mutex_);
        queue_.push_back(std::move(job));
        if (idle_ >= queue_.size()) {
            lock.unlock();
            ready_.notify_one();
            return;
        }
        if (threads_ >= max_resolver_threads) return;
        try {
            std::thread([this] { work(); }).detach();
            ++threads_;
        } catch (...) {
            // No thread now: the queued lookup waits for a running one, within its caller's
            // deadline; with none at all it could wait forever, so it fails here instead.
            if (threads_ == 0) {
                queue_.pop_back();
                throw;
            }
        }
    }

private:
    static constexpr auto idle_exit = std::chrono::seconds(10);

    void work() {
        std::unique_lock lock(mutex_);
        for (;;) {
            ++idle_;
            bool got = ready_.wait_for(lock, idle_exit, [this] { return !queue_.empty(); });
            --idle_;
            if (!got) {
                --threads_;
                return;
            }
            auto job = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            job->run();
            job.reset();
            lock.lock();
        }
    }

    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<std::shared_ptr<lookup>> queue_;
    std::size_t threads_ = 0;
    std::size_t idle_ = 0;
};

}  // namespace

void start_lookup(std::shared_ptr<lookup> job) { resolver_pool::instance().submit(std::move(job)); }

}  // namespace netloop::detail
