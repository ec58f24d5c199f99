//! What one upstream call costs the function in CPU, by client: the AWS SDK (`aws-sdk-iot`, as
//! the function configures it) against a plain `reqwest` call (how the function calls
//! balenaCloud, and ClearBlade). Issue 17 asks why AWS costs several times the CPU per device of
//! the other clouds; this separates the client's share from the flow's.
//!
//!   cargo run --release -p provision-lambda --example call_cost -- [--calls N]
//!
//! It starts a stand-in server in a child process (this binary, `--serve`), so the server's
//! work is not counted: an HTTP/1.1 keep-alive server on 127.0.0.1 answering every request with
//! one small JSON document, as AWS IoT's and balenaCloud's answers are. Then, for each client
//! and operation, N calls one after another on one kept-alive connection, after a warm-up, and
//! the process's CPU time (utime+stime from /proc/self/stat) divided by N. No TLS on either
//! side (both clients use the same rustls), so the figure is the client's own work: building,
//! signing, sending and parsing a request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use provision_core::registry::aws::AwsIotRegistry;

const ANSWER: &str = r#"{"thingName":"device","thingArn":"arn:aws:iot:eu-west-1:123456789012:thing/device","thingId":"7c1a4b1e-0000-4000-8000-000000000000","principals":[],"d":[{"id":1,"uuid":"device"}]}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "call_cost: CPU per upstream call, AWS SDK against reqwest (issue 17)\n\n\
             Usage: call_cost [--calls N]   N calls per figure (default 3000)\n\
             \x20      call_cost --serve       the stand-in server (started by call_cost itself)"
        );
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("--serve") {
        return serve();
    }
    let calls = match args.iter().position(|a| a == "--calls") {
        Some(i) => args
            .get(i + 1)
            .ok_or("--calls needs a number")?
            .parse::<u32>()
            .map_err(|e| format!("--calls: {e}"))?,
        None => 3000,
    };
    if calls == 0 {
        return Err("--calls must be at least 1".into());
    }
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let url = format!("http://127.0.0.1:{}", line.trim());
    let result = measure(&url, calls);
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn measure(url: &str, calls: u32) -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: no other thread runs yet (the runtime is built below).
    unsafe {
        std::env::set_var("AWS_REGION", "eu-west-1");
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "call-cost-secret");
        std::env::set_var("AWS_ENDPOINT_URL", url);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The SDK as the function configures it (retries, timeouts, behaviour version).
        let sdk = AwsIotRegistry::sdk_config(Duration::from_secs(3)).await;
        let iot = aws_sdk_iot::Client::new(&sdk);
        let http = reqwest::Client::builder().build()?;
        println!(
            "call_cost: {calls} calls per figure, one after another on one kept-alive connection; CPU = utime+stime of this process (the server is another)"
        );
        println!("{:<58} {:>16} {:>12}", "client and call", "CPU per call", "wall per call");
        let thing = || async { done(iot.create_thing().thing_name("device").send().await) };
        report("aws-sdk-iot CreateThing (POST, JSON body, SigV4)", calls, thing).await?;
        let principals = || async {
            done(iot.list_thing_principals().thing_name("device").send().await)
        };
        report("aws-sdk-iot ListThingPrincipals (GET, SigV4)", calls, principals).await?;
        let json = |request: reqwest::RequestBuilder| async move {
            let answer = request.bearer_auth("call-cost-token").send().await;
            done(answer.map_err(|e| e.to_string())?.json::<serde_json::Value>().await)
        };
        let post = || {
            json(http.post(format!("{url}/v7/device_tag")).json(
                &serde_json::json!({"device": 1, "tag_key": "k", "value": "v"}),
            ))
        };
        report("reqwest POST, JSON body and answer (bearer token)", calls, post).await?;
        let get = || json(http.get(format!("{url}/v7/device?$filter=uuid%20eq%20'device'")));
        report("reqwest GET, JSON answer (bearer token)", calls, get).await?;
        Ok(())
    })
}

async fn report<F, Fut>(label: &str, calls: u32, call: F) -> Result<(), Box<dyn std::error::Error>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for _ in 0..50 {
        call().await.map_err(|e| format!("{label}: {e}"))?;
    }
    let cpu = cpu_time()?;
    let wall = Instant::now();
    for _ in 0..calls {
        call().await.map_err(|e| format!("{label}: {e}"))?;
    }
    let wall = wall.elapsed();
    let cpu = cpu_time()? - cpu;
    println!(
        "{label:<58} {:>13.1} µs {:>9.1} µs",
        cpu.as_secs_f64() * 1e6 / f64::from(calls),
        wall.as_secs_f64() * 1e6 / f64::from(calls)
    );
    Ok(())
}

/// A call's outcome without its value, its error as text.
fn done<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<(), String> {
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// utime + stime of this process, from /proc/self/stat (in clock ticks of 10 ms).
fn cpu_time() -> Result<Duration, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name (which ends with the last ')'): utime and stime are
    // the 14th and 15th fields of the line, the 12th and 13th after the name.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .ok_or("unreadable /proc/self/stat")
        .map(|(u, s)| u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0))?;
    Ok(Duration::from_millis(ticks * 10))
}

/// The stand-in: prints its port, then answers every request on every connection with
/// [`ANSWER`], keeping connections open.
fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let _ = answer_all(stream);
        });
    }
    Ok(())
}

fn answer_all(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        )?;
    }
}
