use clap::Parser;

fn main() {
    registerbrygga::runtime::limit_malloc_arenas();
    let cli = registerbrygga::cli::Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        match registerbrygga::cli::main(cli).await {
            Ok(code) => code,
            Err(e) => {
                // Errors never carry personal data; redact anyway, as for log lines.
                eprintln!("error: {}", registerbrygga::telemetry::redact(&format!("{e:#}")));
                2
            }
        }
    });
    std::process::exit(code);
}
