//! Writes the seed corpus (valid inputs for every target) into
//! `tests/fuzz/corpus/<target>/seed-<name>`. Run from the repository root:
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --bin write-seeds`.

#[path = "targets.rs"]
mod targets;

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in targets::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("wrote the seed corpus under {}", root.display());
    Ok(())
}
