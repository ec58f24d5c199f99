//! What the compat tests share: they run a script in `tests/compat` with the real published
//! client against an emulator under `node`, and check what the emulator saw.
//!
//! Each test binary compiles its own copy of this module and uses only part of it, so the items
//! not every compat test uses carry `#[allow(dead_code)]`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use provision_emulators::{balena, clearblade, iothub};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .canonicalize()
        .expect("the repository root exists")
}

/// `tests/compat` of the repository: the scripts and their pinned clients.
pub fn compat_dir() -> PathBuf {
    repo_root().join("tests").join("compat")
}

/// Panics, naming `missing` and how to install it, unless `compat/node_modules/<package>` (say
/// `@clearblade/iot`) is installed.
pub fn require_package(compat: &Path, package: &str, missing: &str) {
    let manifest = package
        .split('/')
        .fold(compat.join("node_modules"), |dir, part| dir.join(part))
        .join("package.json");
    assert!(
        manifest.is_file(),
        "{missing} is missing: run `npm ci --prefix tests/compat` (from the repository root) to \
         install the pinned {package}, then run this test again"
    );
}

/// `node <compat>/<script>`, run from `compat` with no stdin and killed if the test drops it.
pub struct NodeScript {
    script: PathBuf,
    command: tokio::process::Command,
}

impl NodeScript {
    pub fn new(compat: &Path, script: &str) -> Self {
        let script = compat.join(script);
        let mut command = tokio::process::Command::new("node");
        command
            .arg(&script)
            .current_dir(compat)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        NodeScript { script, command }
    }

    #[allow(dead_code)] // only the balena-sdk test passes arguments
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.command.args(args);
        self
    }

    #[allow(dead_code)] // the balena-sdk test passes no environment
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Runs the script to the end and captures its output; panics if it takes longer than
    /// `timeout_secs` or `node` cannot be run (`package` names the client in that message).
    pub async fn output(mut self, timeout_secs: u64, package: &str) -> Output {
        let run = self.command.output();
        match tokio::time::timeout(Duration::from_secs(timeout_secs), run).await {
            Err(_) => panic!(
                "node {} did not finish within {timeout_secs} s",
                self.script.display()
            ),
            Ok(Err(e)) => panic!(
                "could not run `node` ({e}); install Node.js to run the {package} compat test"
            ),
            Ok(Ok(output)) => output,
        }
    }
}

/// Fails the test with the script's output and `log` (the requests the emulator saw) unless the
/// script succeeded.
#[track_caller]
pub fn assert_script_passed(output: &Output, package: &str, log: &str) {
    assert!(
        output.status.success(),
        "{package} compat script failed ({})\n--- stdout\n{}\n--- stderr\n{}\n--- requests the emulator saw\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// A request an emulator recorded, as `saw` and `position` match it.
pub trait Recorded {
    fn method(&self) -> &str;
    fn status(&self) -> u16;
    /// What the request addressed: the resource (balena) or the device id (IoT Hub, ClearBlade).
    fn target(&self) -> Option<&str>;
}

impl Recorded for balena::RecordedRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn status(&self) -> u16 {
        self.status
    }
    fn target(&self) -> Option<&str> {
        Some(&self.resource)
    }
}

impl Recorded for iothub::RecordedRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn status(&self) -> u16 {
        self.status
    }
    fn target(&self) -> Option<&str> {
        self.device_id.as_deref()
    }
}

impl Recorded for clearblade::RecordedRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn status(&self) -> u16 {
        self.status
    }
    fn target(&self) -> Option<&str> {
        self.device.as_deref()
    }
}

/// Where the first `method` on `target` answered `status` stands in `reqs`.
pub fn position<R: Recorded>(reqs: &[R], method: &str, target: &str, status: u16) -> Option<usize> {
    reqs.iter()
        .position(|r| r.method() == method && r.target() == Some(target) && r.status() == status)
}

/// Whether the emulator answered `method` on `target` with `status`.
pub fn saw<R: Recorded>(reqs: &[R], method: &str, target: &str, status: u16) -> bool {
    position(reqs, method, target, status).is_some()
}

/// Deletes the file when the test ends, however it ends.
#[allow(dead_code)] // the balena-sdk test writes no files
pub struct TempFile(pub PathBuf);

#[allow(dead_code)] // the balena-sdk test writes no files
impl TempFile {
    /// A fresh `<prefix>-<uuid>.<ext>` path in the temp directory; nothing is written yet.
    pub fn new(prefix: &str, ext: &str) -> Self {
        TempFile(
            std::env::temp_dir().join(format!("{prefix}-{}.{ext}", uuid::Uuid::new_v4().simple())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[allow(dead_code)] // only the ClearBlade test writes files this way
pub fn temp_file(prefix: &str, ext: &str, contents: &str) -> TempFile {
    let file = TempFile::new(prefix, ext);
    std::fs::write(&file.0, contents).expect("temp file written");
    file
}
