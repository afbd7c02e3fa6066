//! The `wxnotify` binary: everything is in the library; see `wxnotify --help`.

fn main() -> std::process::ExitCode {
    wxnotify::cli::main()
}
