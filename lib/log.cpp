// SPDX-License-Identifier: MIT
// set_logger and the helpers lib/ logs through.
#include <atomic>
#include <mutex>

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

void log_escaped(std::exception_ptr e, const char* what, const std::string& where) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const error& err) {
        bool expected = err.kind() == errc::connection_closed || err.kind() == errc::cancelled;
        log(expected ? spdlog::level::debug : spdlog::level::err, "{} {} ended: {}", what, where,
            err.what());
    } catch (const std::system_error& err) {
        bool expected = err.code() == asio::error::operation_aborted;
        log(expected ? spdlog::level::debug : spdlog::level::err, "{} {} ended: {}", what, where,
            err.what());
    } catch (const std::exception& err) {
        log(spdlog::level::err, "{} {} threw: {}", what, where, err.what());
    } catch (...) {
        log(spdlog::level::err, "{} {} threw a non-std exception", what, where);
    }
}

}  // namespace detail
}  // namespace netloop
