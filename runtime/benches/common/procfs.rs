//! Figures from `/proc`: memory, CPU, I/O, threads, the filesystem.

use super::*;

pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Seconds all CPUs spent busy and in I/O wait since boot (`/proc/stat`).
pub fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)?;
    let iowait = f.get(4)?;
    let ticks = clock_ticks();
    Some((
        (total - idle - iowait) as f64 / ticks,
        *iowait as f64 / ticks,
    ))
}

/// A counter of `/proc/PID/io` (`write_bytes`: bytes sent to storage).
pub fn proc_io(pid: u32, key: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds of a process (`pid` or `"self"`).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU seconds of each thread of `pid`: (tid, name, seconds).
pub fn thread_cpu(pid: u32) -> Vec<(String, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let tid = t.ok()?.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let cpu = cpu_seconds(&format!("{pid}/task/{tid}"))?;
            Some((tid, name.trim().to_owned(), cpu))
        })
        .collect()
}

/// CPU in cores by thread name between two [`thread_cpu`] snapshots, busiest first.
pub fn thread_share(
    before: &[(String, String, f64)],
    after: &[(String, String, f64)],
    secs: f64,
) -> Vec<(String, f64)> {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for (tid, name, cpu) in after {
        let was = before
            .iter()
            .find(|(t, _, _)| t == tid)
            .map_or(0.0, |(_, _, c)| *c);
        let used = (cpu - was) / secs;
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += used,
            None => by_name.push((name.clone(), used)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_name
}

pub fn show_threads(threads: &[(String, f64)]) -> String {
    let shown: Vec<String> = threads
        .iter()
        .filter(|(_, c)| *c >= 0.005)
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect();
    if shown.is_empty() {
        "n/a".to_owned()
    } else {
        shown.join(", ")
    }
}

pub fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "filesystem unknown".to_owned();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max()
        .map_or_else(|| "filesystem unknown".to_owned(), |(_, fs)| fs)
}
