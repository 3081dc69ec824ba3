//! Acts as the RonDB program it is called as (`ndb_mgmd`, ...), or as
//! `rondb-standin PROGRAM ARGS...`.

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("rondb-standin")
        .to_string();
    let program = if called_as == "rondb-standin" {
        if args.len() < 2 {
            eprintln!(
                "usage: rondb-standin PROGRAM [ARGS...]; PROGRAM is one of: {}",
                rondb_standin::PROGRAMS.join(", ")
            );
            std::process::exit(2);
        }
        args.remove(0);
        args[0].clone()
    } else {
        called_as
    };
    args.remove(0);
    std::process::exit(rondb_standin::run(&program, args));
}
