//! Open-loop HTTP/1.1 load generator for `bench/load.sh` (wrk2-style): requests are
//! scheduled at a fixed rate whatever the answers do. Two latencies are kept: from the
//! scheduled time (no coordinated omission: a stalled server shows as queueing delay, but
//! Tokio's 1 ms timer adds up to 1 ms) and from the actual send (the server's service time,
//! including its queueing, since sends do not wait for earlier answers while a connection
//! is free). With `--rate 0` it runs closed-loop to find the throughput ceiling.
//!
//! `loadgen --target 127.0.0.1:18081 --path /items/1 --rate 1000 --secs 10 --conns 32
//!  [--header 'Authorization: Bearer ...']` prints one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

struct Args {
    target: String,
    path: String,
    rate: u64,
    secs: u64,
    conns: usize,
    headers: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        target: "127.0.0.1:18080".into(),
        path: "/".into(),
        rate: 1000,
        secs: 10,
        conns: 32,
        headers: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => args.target = value,
            "--path" => args.path = value,
            "--rate" => args.rate = value.parse()?,
            "--secs" => args.secs = value.parse()?,
            "--conns" => args.conns = value.parse()?,
            "--header" => {
                let (k, v) = value
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("--header wants 'Name: value'"))?;
                args.headers.push((k.trim().into(), v.trim().into()));
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse_args()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Arc<Args>) -> anyhow::Result<()> {
    let schedule = Arc::new(Schedule::new(&args));
    let mut workers = Vec::new();
    for _ in 0..args.conns {
        let sender = connect(&args.target).await?;
        workers.push(tokio::spawn(worker(args.clone(), schedule.clone(), sender)));
    }
    let mut all = Samples::default();
    for worker in workers {
        let samples = worker.await?;
        all.latencies.extend(samples.latencies);
        all.scheduled.extend(samples.scheduled);
        all.errors += samples.errors;
    }
    report(&args, all, schedule.start.elapsed().as_secs_f64());
    Ok(())
}

/// When requests are due: request i at start + i/rate (closed loop: due at once).
struct Schedule {
    start: Instant,
    end: Instant,
    total: u64,
    next: Mutex<u64>,
}

impl Schedule {
    fn new(args: &Args) -> Schedule {
        let start = Instant::now() + Duration::from_millis(100);
        Schedule {
            start,
            end: start + Duration::from_secs(args.secs),
            total: args.rate * args.secs,
            next: Mutex::new(0),
        }
    }

    /// When the next request is due, or `None` once the run is over.
    async fn next_due(&self, rate: u64) -> Option<Instant> {
        let mut n = self.next.lock().await;
        if rate > 0 && *n >= self.total {
            return None;
        }
        let i = *n;
        *n += 1;
        let due = match (i * 1_000_000_000).checked_div(rate) {
            Some(offset) => self.start + Duration::from_nanos(offset),
            None => Instant::now(),
        };
        (rate > 0 || due < self.end).then_some(due)
    }
}

/// What one connection measured.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    scheduled: Vec<Duration>,
    errors: u64,
}

/// Sends requests on one connection as they fall due; reconnects after a failure.
async fn worker(args: Arc<Args>, schedule: Arc<Schedule>, mut sender: Sender) -> Samples {
    let mut samples = Samples::default();
    while let Some(due) = schedule.next_due(args.rate).await {
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        let mut request = Request::get(args.path.as_str()).header("host", "bench.local");
        for (k, v) in &args.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let Ok(request) = request.body(Empty::new()) else {
            samples.errors += 1;
            continue;
        };
        let ok = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await.is_ok() && status == 200
            }
            Err(_) => false,
        };
        if ok {
            samples.latencies.push(sent.elapsed());
            samples.scheduled.push(due.elapsed());
        } else {
            samples.errors += 1;
            if let Ok(fresh) = connect(&args.target).await {
                sender = fresh;
            }
        }
    }
    samples
}

/// Prints the run as one JSON line.
fn report(args: &Args, mut samples: Samples, elapsed: f64) {
    let (latencies, scheduled) = (&mut samples.latencies, &mut samples.scheduled);
    latencies.sort_unstable();
    scheduled.sort_unstable();
    let pct = |sorted: &[Duration], p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i].as_secs_f64() * 1e6
    };
    println!(
        "{{\"rate\":{},\"ok\":{},\"errors\":{},\"achieved_rps\":{:.0},\"p50_us\":{:.0},\"p90_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"max_us\":{:.0},\"sched_p50_us\":{:.0},\"sched_p99_us\":{:.0}}}",
        args.rate,
        latencies.len(),
        samples.errors,
        latencies.len() as f64 / elapsed,
        pct(latencies, 0.5),
        pct(latencies, 0.9),
        pct(latencies, 0.99),
        pct(latencies, 0.999),
        pct(latencies, 1.0),
        pct(scheduled, 0.5),
        pct(scheduled, 0.99)
    );
}
