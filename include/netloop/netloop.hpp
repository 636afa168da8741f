// SPDX-License-Identifier: MIT
// The whole of netloop in one include.
//
// Defaults that hold for every type unless its own notes say otherwise:
// - Thread safety: an object belongs to the loop it was made on, and is used from the thread
//   that runs that loop. `server::close()` and `loop::stop()` are safe from any thread.
// - Failure: a call that fails throws `netloop::error`; its `kind()` says what failed.
// - Cancellation: cancelling a task cancels the netloop operation it awaits.
#pragma once

#include <netloop/detail/config.hpp>

#include <netloop/address.hpp>
#include <netloop/connection.hpp>
#include <netloop/daemon.hpp>
#include <netloop/error.hpp>
#include <netloop/log.hpp>
#include <netloop/loop.hpp>
#include <netloop/metrics.hpp>
#include <netloop/proxy.hpp>
#include <netloop/server.hpp>
#include <netloop/signal_stream.hpp>
#include <netloop/task.hpp>
#include <netloop/tls.hpp>
#include <netloop/version.hpp>
