use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a request allocates and frees many small buffers on
/// two worker threads, and glibc spent about a tenth of the server's CPU time on that
/// (`bench/peers.py`, reused instances at concurrency 64).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    weir::cli::main()
}
