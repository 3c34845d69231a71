fn main() {
    eprintln!("ackwatch: the daemon is not built yet");
    std::process::exit(2);
}
