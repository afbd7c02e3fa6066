//! The `wxnotify` binary: everything is in the library; see `wxnotify --help`.

/// Counts nothing unless `WXNOTIFY_COUNT_ALLOCATIONS=1` (src/allocations.rs).
#[global_allocator]
static ALLOCATOR: wxnotify::allocations::Counting = wxnotify::allocations::Counting;

fn main() -> std::process::ExitCode {
    wxnotify::cli::main()
}
