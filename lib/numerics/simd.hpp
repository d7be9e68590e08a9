#pragma once
// QKV_SIMD_CLONES marks a hot kernel to be compiled twice — for x86-64-v3 (AVX2 + FMA, every
// x86 server since 2013) and for the baseline x86-64 that the rest of qkv targets — with the
// loader picking the clone the CPU can run (function multiversioning through an ifunc). The
// binaries stay portable, and the kernels that dominate a step run at 8 floats per instruction
// instead of SSE2's 4. Results of the two clones may differ in the last bits (FMA contraction):
// the same machine always takes the same clone, so a seed still reproduces a run there.
//
// Plain code under sanitizers (they gain nothing from a second clone), off x86-64 Linux, or
// when built with -DQKV_NO_SIMD_CLONES.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define QKV_SANITIZED_BUILD 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define QKV_SANITIZED_BUILD 1
#endif

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(QKV_NO_SIMD_CLONES) && \
    !defined(QKV_SANITIZED_BUILD)
#define QKV_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define QKV_SIMD_CLONES_AVX512 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QKV_SIMD_CLONES
#define QKV_SIMD_CLONES_AVX512
#endif

// QKV_SIMD_CLONES_AVX512 adds an x86-64-v4 (AVX-512) clone, for the integer kernels that gain
// from its instructions: the dropout hash's 64-bit multiplies are one instruction there, where
// AVX2 emulates them with three 32-bit ones (1.8x faster mask generation, same bits: the clones
// differ only in how exact integer operations are vectorised).
