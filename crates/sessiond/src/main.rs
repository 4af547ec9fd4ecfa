// mimalloc rather than glibc's malloc. Every request allocates a little (hyper's buffers,
// header maps, request extensions, the JSON body), and under callgrind glibc's malloc/free
// made up ~28 % of the user-space instructions of a `/healthz` request (28.8k instructions
// per request with mimalloc, 40k with glibc); `malloc_consolidate` alone showed at 1.7 % of
// all CPU in a perf profile of `GET /api/session`. Only the server binary chooses the
// allocator; the library crates leave it to their users.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sessiond::main()
}
