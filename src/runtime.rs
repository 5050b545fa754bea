//! Process set-up shared by the binary and the benchmark, done before any thread starts.

/// Cap glibc's malloc at two arenas. Why: glibc gives each thread that finds the heap busy an
/// arena of its own (up to eight per core) and keeps what is freed in each, so a backfill's
/// peak RSS grew with the size of the region while its live heap did not. Measured at 300k
/// contacts on SQLite: 191 MiB without the cap, 121 MiB with it (BENCHMARKS.md, issue 18).
/// Must run before the runtime's threads exist. An operator's own setting
/// (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`) is left as it is.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var_os("MALLOC_ARENA_MAX").is_some() || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !set_by_operator {
            // SAFETY: mallopt only sets a parameter of the allocator; called before other threads run.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}
