fn main() -> std::process::ExitCode {
    tune_malloc();
    cbdr::cli::run()
}

/// glibc's allocator, tuned for a process that streams gigabytes through
/// buffers of a few MiB on several threads:
/// - two arenas, not one per thread (up to 8 per core): buffers freed on
///   another thread than the one that allocated them kept their arena's
///   pages (a backup to S3 peaked at 239 MB RSS instead of 209 MB, a
///   restore at 69 MB instead of 39 MB, with the same wall time);
/// - blocks of 8 MiB or more (an S3 part's buffer, 16 MiB) mapped on their
///   own and unmapped when freed, instead of the threshold that glibc
///   raises to the largest block freed: with it the freed part buffers
///   stayed in the heap (a random-data backup to S3 peaked at 159 to 218
///   MB, 123 to 149 MB with this, same wall time);
/// - free memory at the top of a heap kept up to 8 MiB rather than glibc's
///   128 KiB once the mmap threshold is set (which fixes the trim threshold
///   too): a block restore decodes one codec object per 1 MiB extent, each
///   with decoder buffers of a few MiB; trimmed at every free, each was
///   faulted in and zeroed again by the kernel (a pgbench-20 delta-chain
///   restore took 2.1 CPU seconds, 1.05 with this; a tar restore 0.9, 0.54).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}
