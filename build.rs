//! Builds the list of the Stratum emulator's sandbox registers: every `*.json` under
//! `src/sandbox/stratum/registers/` is built into the binary (`sandbox::stratum::
//! sandbox_registers`), so a sandbox register is added as data, without a Rust change. It also
//! has cargo rebuild when a store migration is added.

use std::path::Path;

fn main() {
    // sqlx's `migrate!` reads its folder when the crate compiles; a migration added to it is no
    // change to any Rust file, so without this an incremental build would leave it out.
    println!("cargo:rerun-if-changed=src/store/sqlite/migrations");
    println!("cargo:rerun-if-changed=src/store/postgres/migrations");
    let dir = Path::new("src/sandbox/stratum/registers");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| {
                    println!("cargo:rerun-if-changed={}", p.display());
                    p.canonicalize().expect("register file path").display().to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let body: String = files.iter().map(|f| format!("    ({:?}, include_bytes!({:?}).as_slice()),\n", Path::new(f).file_name().unwrap().to_string_lossy(), f)).collect();
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("sandbox_registers.rs");
    std::fs::write(out, format!("/// (file name, bytes) of every sandbox register file.\npub const SANDBOX_REGISTER_FILES: &[(&str, &[u8])] = &[\n{body}];\n")).expect("write sandbox_registers.rs");
}
