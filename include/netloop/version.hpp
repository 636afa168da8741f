// SPDX-License-Identifier: MIT
// The version of netloop these headers belong to.
#pragma once

#define NETLOOP_VERSION_MAJOR 0
#define NETLOOP_VERSION_MINOR 1
#define NETLOOP_VERSION_PATCH 0
#define NETLOOP_VERSION_STRING "0.1.0"
