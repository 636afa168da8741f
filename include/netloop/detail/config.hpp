// SPDX-License-Identifier: MIT
// The compiler check every public header makes first: netloop's own message, not Asio's.
#pragma once

// Without C++20, the first error would come from deep inside Asio or <coroutine> ("the coroutine
// header requires -fcoroutines"), followed by dozens more.
#if __cplusplus < 202002L || !defined(__cpp_impl_coroutine)
#error "netloop needs C++20 (-std=c++20)"
#endif
