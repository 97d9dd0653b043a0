//! Writes the generated CRD YAML into `crds/` and the `scopegate-crds` chart.
//!
//! Run from anywhere inside the repository: `cargo run -p scopegate-crds --bin crdgen`.
//! With `--check` it writes nothing and exits 1 when a file is stale.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let files = match scopegate_crds::generated_files() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: {err}: {:?}", std::error::Error::source(&err));
            return ExitCode::FAILURE;
        }
    };
    let root = repo_root();
    let mut stale = 0;
    for file in files {
        let path = root.join(&file.path);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == file.content {
            continue;
        }
        if check {
            eprintln!("crdgen: {} is stale", file.path);
            stale += 1;
            continue;
        }
        if let Some(dir) = path.parent()
            && let Err(err) = std::fs::create_dir_all(dir)
        {
            eprintln!("crdgen: creating {}: {err}", dir.display());
            return ExitCode::FAILURE;
        }
        if let Err(err) = std::fs::write(&path, &file.content) {
            eprintln!("crdgen: writing {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("crdgen: wrote {}", file.path);
    }
    if stale > 0 {
        eprintln!("crdgen: run `cargo run -p scopegate-crds --bin crdgen` to refresh");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
