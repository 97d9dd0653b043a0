//! `import-cycles CRATE_DIR...`: fails when the modules of a crate import each other in a
//! cycle (see the library's documentation for what counts). Each directory's crate roots are
//! read: `src/lib.rs`, `src/main.rs` and `src/bin/*.rs`, those that exist.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use scopegate_import_cycles::Crate;

fn roots(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut roots: Vec<PathBuf> = ["src/lib.rs", "src/main.rs"]
        .iter()
        .map(|r| dir.join(r))
        .filter(|r| r.is_file())
        .collect();
    if let Ok(bins) = std::fs::read_dir(dir.join("src/bin")) {
        for entry in bins {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "rs") {
                roots.push(path);
            } else if path.join("main.rs").is_file() {
                roots.push(path.join("main.rs"));
            }
        }
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{}: no crate root in src/",
        dir.display()
    );
    roots.sort();
    Ok(roots)
}

fn main() -> anyhow::Result<ExitCode> {
    let dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(!dirs.is_empty(), "usage: import-cycles CRATE_DIR...");
    let (mut modules, mut cycles) = (0, 0);
    for dir in &dirs {
        for root in roots(dir)? {
            let krate =
                Crate::load(&root).with_context(|| format!("reading {}", root.display()))?;
            modules += krate.len();
            for cycle in krate.cycles() {
                cycles += 1;
                eprintln!(
                    "import cycle in {}: {}",
                    root.display(),
                    cycle.modules.join(" -> ")
                );
                for evidence in &cycle.evidence {
                    eprintln!("  {evidence}");
                }
            }
        }
    }
    if cycles > 0 {
        eprintln!(
            "{cycles} import cycle(s) between modules: make one module depend on the other, not both"
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "no import cycle between the modules of {} crate(s) ({modules} modules)",
        dirs.len()
    );
    Ok(ExitCode::SUCCESS)
}
