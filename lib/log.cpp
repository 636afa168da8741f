// SPDX-License-Identifier: MIT
// set_logger and the helpers lib/ logs through.
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <system_error>
#include <typeinfo>

#include <asio/error.hpp>

#include <netloop/error.hpp>
#include <netloop/log.hpp>

#include "logging.hpp"

namespace netloop {
namespace {

std::mutex logger_mutex;
std::shared_ptr<spdlog::logger> current_logger;
std::atomic<bool> logging_on{false};

}  // namespace

void set_logger(std::shared_ptr<spdlog::logger> logger) {
    std::lock_guard lock(logger_mutex);
    logging_on.store(logger != nullptr, std::memory_order_release);
    current_logger = std::move(logger);
}

std::shared_ptr<spdlog::logger> logger() noexcept {
    if (!logging_on.load(std::memory_order_acquire)) return nullptr;
    std::lock_guard lock(logger_mutex);
    return current_logger;
}

namespace detail {

namespace {

// The exception `e` holds as a `const T*` if it is a T, else nullptr: what a `catch (const T&)`
// would bind to, found without rethrowing. With libstdc++ the exception_ptr is the thrown
// object's address and the type_info does the catch's matching (the one the C++ runtime's
// personality routine uses), so no unwinding happens; elsewhere it rethrows. The object lives as
// long as `e`.
template <typename T>
const T* peek(const std::exception_ptr& e) noexcept {
#if defined(__GLIBCXX__) && defined(__GXX_RTTI)
    static_assert(sizeof(std::exception_ptr) == sizeof(void*));
    const std::type_info* thrown = e.__cxa_exception_type();
    if (thrown == nullptr) return nullptr;
    void* object = nullptr;
    std::memcpy(&object, &e, sizeof object);
    if (!typeid(T).__do_catch(thrown, &object, 1)) return nullptr;
    return static_cast<const T*>(object);
#else
    try {
        std::rethrow_exception(e);
    } catch (const T& x) {
        return &x;
    } catch (...) {
        return nullptr;
    }
#endif
}

}  // namespace

// Runs once per task that ends by an exception, EOF included: with logging off (or above error)
// it returns before looking at `e`, and it classifies `e` without rethrowing it.
void log_escaped(std::exception_ptr e, const char* what, const std::string& where) noexcept {
    if (!log_enabled(spdlog::level::err)) return;  // the expected endings log below err
    try {
        if (const auto* err = peek<error>(e)) {
            bool expected =
                err->kind() == errc::connection_closed || err->kind() == errc::cancelled;
            log(expected ? spdlog::level::debug : spdlog::level::err, "{} {} ended: {}", what,
                where, err->what());
        } else if (const auto* sys = peek<std::system_error>(e)) {
            bool expected = sys->code() == asio::error::operation_aborted;
            log(expected ? spdlog::level::debug : spdlog::level::err, "{} {} ended: {}", what,
                where, sys->what());
        } else if (const auto* ex = peek<std::exception>(e)) {
            log(spdlog::level::err, "{} {} threw: {}", what, where, ex->what());
        } else {
            log(spdlog::level::err, "{} {} threw a non-std exception", what, where);
        }
    } catch (...) {  // the logger failed (no memory): nothing to be done
    }
}

}  // namespace detail
}  // namespace netloop
