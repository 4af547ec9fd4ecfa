// mimalloc rather than glibc's malloc. Every request allocates a little (hyper's buffers,
// header maps, request extensions, the JSON body), and glibc's malloc/free were a large share
// of a cheap request's instructions (docs/performance.md, "The allocator"). Only the server
// binary chooses the allocator; the library crates leave it to their users.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sessiond::main()
}
