//! Latency report shared by the ceiling clients: totals, then one `SUMMARY key=value ...` line
//! that `bench/run.sh` parses.

use std::time::Duration;

/// Latencies and failures measured by one publishing task.
#[derive(Default)]
pub struct WorkerReport {
    pub latencies_us: Vec<u64>,
    pub failures: u64,
}

/// Prints the totals of all tasks. `verb` names what counts as a success, such as
/// `confirmed`.
pub fn print_report(reports: &[WorkerReport], elapsed: Duration, verb: &str) {
    let mut latencies_us: Vec<u64> = reports
        .iter()
        .flat_map(|report| report.latencies_us.iter().copied())
        .collect();
    latencies_us.sort_unstable();
    let failures: u64 = reports.iter().map(|report| report.failures).sum();
    let succeeded = latencies_us.len() as u64;
    let seconds = elapsed.as_secs_f64();
    let per_second = succeeded as f64 / seconds;
    let p50_ms = percentile_us(&latencies_us, 50.0) as f64 / 1000.0;
    let p99_ms = percentile_us(&latencies_us, 99.0) as f64 / 1000.0;

    println!("{verb} {succeeded} publishes in {seconds:.2} s, {failures} failed");
    println!("publishes/s: {per_second:.1}, latency p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms");
    println!(
        "SUMMARY confirmed={succeeded} failures={failures} seconds={seconds:.3} publishes_per_sec={per_second:.1} p50_ms={p50_ms:.3} p99_ms={p99_ms:.3}"
    );
}

/// Returns the nearest-rank percentile of sorted values, or 0 when there are none.
fn percentile_us(sorted: &[u64], percent: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
