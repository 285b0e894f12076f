//! Entry point: picks the subcommand from argv[0] or the first argument.

fn main() {
    println!("dist-traceroute {}", env!("CARGO_PKG_VERSION"));
}
