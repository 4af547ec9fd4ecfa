// PLACEHOLDER: replaced by the real app
//
// Only the command line of the real app (`--listen ADDR`, default 127.0.0.1:3000) so the
// workspace builds and the black-box tests in `tests/` have a binary to start; it serves
// nothing, so those tests fail until the real app takes this file's place.

fn main() {
    let mut listen = String::from("127.0.0.1:3000");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            match args.next() {
                Some(addr) => listen = addr,
                None => {
                    eprintln!("--listen needs an address");
                    std::process::exit(2);
                }
            }
        } else if let Some(addr) = arg.strip_prefix("--listen=") {
            addr.clone_into(&mut listen);
        } else {
            eprintln!("unknown argument {arg:?}");
            std::process::exit(2);
        }
    }
    println!("placeholder (would listen on {listen})");
}
