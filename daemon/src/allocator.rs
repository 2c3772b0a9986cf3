//! How the C allocator hands memory back to the system.
//!
//! glibc's `malloc` serves a large request with its own `mmap` and unmaps it on `free`, but it
//! raises that threshold to the size of each such block freed ("dynamic mmap threshold", up to
//! 32 MiB). After one argon2 password hash (19 MiB of working memory, `auth.rs` of the root)
//! every later hash was served from a heap arena and stayed resident: the idle root measured
//! 59.6 MB RSS, 45 MB of it anonymous. A fixed threshold keeps every block of 1 MiB or more
//! in its own mapping, returned on `free` (22.0 MB idle, same run otherwise;
//! `bash scripts/bench.sh idle`).

/// Blocks of this size or more get a mapping of their own, unmapped when freed.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (no-op on other C libraries). Call once,
/// first thing in `main` (before the big allocations it is for).
pub fn return_large_frees_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets an allocator parameter, under glibc's own arena lock (safe
    // beside other threads), with a valid option and a value in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
