//! Child processes with their output captured line by line (for the secret checks), killed
//! when dropped so no test leaves a process behind.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Every line a set of processes printed, and every answer body they gave, shared so a test
/// (and the secret audit when a world stops) can read them at the end.
#[derive(Clone, Default)]
pub struct LogBook(Arc<Mutex<Book>>);

#[derive(Default)]
struct Book {
    lines: Vec<String>,
    answers: Vec<String>,
}

impl LogBook {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|b| b.lines.clone()).unwrap_or_default()
    }

    pub fn push(&self, line: String) {
        if let Ok(mut book) = self.0.lock() {
            book.lines.push(line);
        }
    }

    /// Keeps an answer's body (error bodies included) for the secret audit.
    pub fn record_answer(&self, body: &str) {
        if let Ok(mut book) = self.0.lock() {
            book.answers.push(body.to_string());
        }
    }

    pub fn answers(&self) -> Vec<String> {
        self.0.lock().map(|b| b.answers.clone()).unwrap_or_default()
    }

    /// Lines that contain any of `needles` (a secret check: expect none).
    pub fn containing(&self, needles: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| needles.iter().any(|n| !n.is_empty() && line.contains(n)))
            .collect()
    }
}

pub struct Process {
    pub child: Child,
    pub name: String,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    /// Spawns `command` with stdout and stderr captured into `logs` (and echoed when
    /// `PROVISION_TEST_ECHO` is set).
    pub fn spawn(name: &str, mut command: Command, logs: &LogBook) -> anyhow::Result<Process> {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("could not start {name}: {e}"))?;
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, logs.clone(), name.to_string())));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, logs.clone(), name.to_string())));
        }
        Ok(Process {
            child,
            name: name.to_string(),
            pumps,
        })
    }

    /// Kills the process and waits until every line it printed is in the log book.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        for pump in self.pumps.drain(..) {
            let _ = pump.await;
        }
    }

    /// Sends SIGTERM (how Cloud Run and the Functions host stop an instance), without waiting.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("{} has already exited", self.name))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit by itself (and its output to be read), at most `limit`.
    pub async fn wait(
        &mut self,
        limit: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{} did not exit within {limit:?}", self.name))??;
        for pump in self.pumps.drain(..) {
            let _ = pump.await;
        }
        Ok(status)
    }
}

async fn pump(stream: impl tokio::io::AsyncRead + Unpin, logs: LogBook, label: String) {
    let echo = std::env::var_os("PROVISION_TEST_ECHO").is_some();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = format!("[{label}] {line}");
        if echo {
            eprintln!("{line}");
        }
        logs.push(line);
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Spawns a server (`command` for a port) on a free port of 127.0.0.1 and waits until *it*
/// answers `GET probe` there (`is_ours` judges status and body). A port found free can be taken
/// by another server before the child binds it (tests start many at once): then the child exits
/// (address in use) while the other server answers, and the server is started again on another
/// port, at most five times. Served means the probe answered as `is_ours` wants *and* the child
/// holds the listening socket: two tests' servers of one kind answer the probe alike.
pub async fn spawn_server(
    what: &str,
    logs: &LogBook,
    command: impl Fn(u16) -> Command,
    probe: &str,
    is_ours: impl Fn(u16, &str) -> bool,
) -> anyhow::Result<(u16, Process)> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        let mut process = Process::spawn(what, command(port), logs)?;
        let url = format!("http://127.0.0.1:{port}{probe}");
        let mut serving = false;
        for _ in 0..600 {
            if let Ok(answer) = http.get(&url).send().await {
                let status = answer.status().as_u16();
                let body = answer.text().await.unwrap_or_default();
                if is_ours(status, &body) {
                    // Another test's server of the same kind answers alike: it is this one
                    // only if this child holds the listening socket.
                    if process
                        .child
                        .id()
                        .is_some_and(|pid| holds_listener(pid, port))
                    {
                        serving = true;
                    } else {
                        last = format!("another server took port {port} before {what} did");
                    }
                    break;
                }
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                last = format!("{what} exited with {status} before it served on port {port}");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if serving {
            return Ok((port, process));
        }
        process.stop().await;
        if last.is_empty() {
            last = format!("{what} did not serve {probe} on port {port} within 30 s");
        }
    }
    anyhow::bail!("{last} (five ports tried)")
}

/// Whether process `pid` holds the socket listening on TCP `port` (Linux: the listening
/// socket's inode, from /proc/net/tcp and tcp6, among the process's open files).
fn holds_listener(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let sockets: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit_once(':')?.1;
                    let listening = *fields.get(3)? == LISTEN
                        && u16::from_str_radix(local_port, 16).ok()? == port;
                    let inode = fields.get(9)?;
                    listening.then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// Waits until something accepts TCP connections on the port, or the child exits.
pub async fn wait_for_port(port: u16, process: &mut Process, what: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            anyhow::bail!("{what} exited with {status} before it listened on port {port}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("{what} did not listen on port {port} within 30 s")
}

#[cfg(test)]
mod tests {
    use super::holds_listener;

    #[test]
    fn a_listener_is_told_apart_by_the_process_holding_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(holds_listener(std::process::id(), port), "this process");
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let held_by_other = holds_listener(other.id(), port);
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!held_by_other, "another process");
        drop(listener);
        assert!(!holds_listener(std::process::id(), port), "closed");
    }
}
