// SPDX-License-Identifier: MIT
// log_capture: routes netloop's log into memory for the test's lifetime.
#pragma once

#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <netloop/log.hpp>

namespace netloop::test {

class log_capture {
public:
    explicit log_capture(spdlog::level::level_enum level = spdlog::level::trace)
        : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)) {
        auto logger = std::make_shared<spdlog::logger>("netloop-test", sink_);
        logger->set_level(level);
        logger->set_pattern("%l %v");
        netloop::set_logger(logger);
    }
    ~log_capture() { netloop::set_logger(nullptr); }
    log_capture(const log_capture&) = delete;
    log_capture& operator=(const log_capture&) = delete;

    [[nodiscard]] std::string text() {
        sink_->flush();
        return out_.str();
    }

    [[nodiscard]] bool contains(const std::string& s) {
        return text().find(s) != std::string::npos;
    }

private:
    std::ostringstream out_;
    std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

}  // namespace netloop::test
