fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    cbdr::cli::run()
}

/// glibc gives each thread that allocates its own arena (up to 8 per
/// core), and buffers freed on one thread keep their arena's pages: a
/// backup's stream, handed between the runtime's workers and the encoding
/// threads, kept pages that no buffer used any more (measured: a backup to
/// S3 peaked at 239 MB RSS instead of 209 MB, a restore at 69 MB instead
/// of 39 MB, with the same wall time).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
