//! Where things are: the repository, its virtual environment, the compiled binaries.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where `binary` takes every workspace binary from, when set (see `use_binaries_from`).
static BINARY_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Makes `binary` take every workspace binary from `dir` from now on (the benchmark points the
/// worlds at release builds this way). The same as setting `PROVISION_BIN_DIR`.
pub fn use_binaries_from(dir: PathBuf) {
    let _ = BINARY_DIR.set(dir);
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The project's Python virtual environment (moto, cfn-lint), `PROVISION_VENV` or `.venv`.
pub fn venv() -> PathBuf {
    std::env::var_os("PROVISION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
}

/// The target directory the running test or demo was built into.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            repo_root().join(dir)
        };
    }
    repo_root().join("target")
}

/// A workspace binary: `<NAME>_BIN` if set, else from the directory `use_binaries_from` or
/// `PROVISION_BIN_DIR` names, else built in the same profile as the running executable. Fails
/// with a message that says how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(variable(name, "BIN")) {
        return Ok(PathBuf::from(explicit));
    }
    // A directory chosen by `use_binaries_from` or `PROVISION_BIN_DIR`: only there.
    if let Some(dir) = BINARY_DIR
        .get()
        .cloned()
        .or_else(|| std::env::var_os("PROVISION_BIN_DIR").map(PathBuf::from))
    {
        let path = dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "binary '{name}' is not in {}: build it there first",
            dir.display()
        );
        return Ok(path);
    }
    // The running executable sits in target/<profile>/ or target/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        candidates.push(dir.join(name));
    }
    candidates.push(target_dir().join("debug").join(name));
    candidates.push(target_dir().join("release").join(name));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!("binary '{name}' is not built: run `cargo build --bins` first")
    })
}

/// `<NAME>_<suffix>` for workspace binary `name`: `cloud-relay`, `BIN` -> `CLOUD_RELAY_BIN`.
fn variable(name: &str, suffix: &str) -> String {
    format!("{}_{suffix}", name.to_uppercase().replace('-', "_"))
}

/// The runner `<NAME>_RUNNER` names for workspace binary `name`, if any: a command line that
/// runs the binary given as its last argument, e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`
/// for an arm64 build on this x86_64 machine (scripts/bench deployed).
pub fn runner(name: &str) -> Option<String> {
    std::env::var(variable(name, "RUNNER"))
        .ok()
        .filter(|r| !r.trim().is_empty())
}

/// The command that runs `binary`, a build of workspace binary `name`: the binary itself, or
/// its runner (see [`runner`], split on whitespace) with the binary as the last argument. Under
/// qemu-user the process (its pid, its `/proc` figures) is the emulator running the binary.
pub fn command(name: &str, binary: &Path) -> tokio::process::Command {
    let runner = runner(name).unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        None => tokio::process::Command::new(binary),
        Some(program) => {
            let mut command = tokio::process::Command::new(program);
            command.args(words).arg(binary);
            command
        }
    }
}
