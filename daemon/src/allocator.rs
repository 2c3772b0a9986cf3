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

/// How often [`keep_giving_back`] hands free memory back.
pub const GIVE_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands the pages no allocation uses back to the system (glibc's `malloc_trim`; no-op on other
/// C libraries); true when some were. Freed memory amid live blocks stays resident otherwise:
/// after a burst of 10,000 placements a cluster kept 25–50 MB it no longer used (measured by
/// calling `malloc_trim(0)` in it from gdb, 2026-12-04).
pub fn give_back_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes glibc's arena locks itself and touches only free chunks.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// [`give_back_free_pages`] every [`GIVE_BACK_EVERY`], for as long as the runtime runs (spawn it
/// first thing in `main`).
pub async fn keep_giving_back() {
    crate::every(GIVE_BACK_EVERY, std::future::pending(), || async {
        give_back_free_pages();
    })
    .await
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_kb() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let resident = statm
            .split_whitespace()
            .nth(1)
            .expect("statm's second field");
        resident.parse::<u64>().expect("a page count") * 4
    }

    /// Small blocks freed around a few kept ones stay resident until given back.
    #[test]
    fn free_pages_amid_live_blocks_are_given_back() {
        let blocks: Vec<Box<[u8; 1000]>> = (0..100_000).map(|_| Box::new([7u8; 1000])).collect();
        let before_free = rss_kb();
        // Keep one block in 64: no page at the heap's end is free, so free() alone returns
        // nothing.
        let kept: Vec<Box<[u8; 1000]>> = blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| (i % 64 == 0).then_some(b))
            .collect();
        let after_free = rss_kb();
        give_back_free_pages();
        let after_trim = rss_kb();
        assert_eq!(kept.len(), 1563);
        let freed_mb = (after_free.saturating_sub(after_trim)) / 1024;
        assert!(
            freed_mb >= 50,
            "RSS {before_free} kB with the blocks, {after_free} kB freed, {after_trim} kB given back"
        );
    }
}
