//! Process metrics from `/proc/self` (Linux): resident memory, CPU time, open file descriptors, start time. Read when
//! `/metrics` is scraped, never on the request path. Elsewhere the readings are simply absent.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessReading {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Appends the readings in the Prometheus text format. Written by hand rather than through the recorder because
/// `process_cpu_seconds_total` is a fractional counter, which the `metrics` counters (integers) cannot hold.
pub fn write_exposition(out: &mut String, r: &ProcessReading) {
    use std::fmt::Write;
    let values = [
        (super::catalogue::PROCESS_RSS, r.resident_bytes.map(|v| v as f64)),
        (super::catalogue::PROCESS_CPU, r.cpu_seconds),
        (super::catalogue::PROCESS_OPEN_FDS, r.open_fds.map(|v| v as f64)),
        (super::catalogue::PROCESS_MAX_FDS, r.max_fds.map(|v| v as f64)),
        (super::catalogue::PROCESS_START_TIME, r.start_time_seconds),
    ];
    for (name, value) in values {
        let Some(value) = value else { continue };
        if super::catalogue::write_family_header(out, name) {
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

#[cfg(target_os = "linux")]
pub fn read() -> ProcessReading {
    // SAFETY: sysconf and getrlimit only read process-wide values into locals.
    let (ticks, page, max_fds) = unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur != libc::RLIM_INFINITY {
            Some(limit.rlim_cur)
        } else {
            None
        };
        (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE), max)
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may itself hold spaces.
    let fields: Vec<&str> = stat.as_deref().and_then(|s| s.rsplit_once(')')).map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(user), Some(system)) if ticks > 0 => Some((user + system) as f64 / ticks as f64),
        _ => None,
    };
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok())));
    let start_time_seconds = match (field(22), boot_time) {
        (Some(start), Some(boot)) if ticks > 0 => Some(boot as f64 + start as f64 / ticks as f64),
        _ => None,
    };
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .filter(|_| page > 0)
        .map(|pages| pages * page as u64);
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    ProcessReading { resident_bytes, cpu_seconds, open_fds, max_fds, start_time_seconds }
}

#[cfg(not(target_os = "linux"))]
pub fn read() -> ProcessReading {
    ProcessReading::default()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn reads_this_process() {
        let r = super::read();
        assert!(r.resident_bytes.unwrap() > 1024 * 1024);
        assert!(r.cpu_seconds.unwrap() >= 0.0);
        assert!(r.open_fds.unwrap() >= 3);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = r.start_time_seconds.unwrap();
        assert!(start <= now + 1.0 && start > now - 86400.0 * 365.0, "{start} vs {now}");
    }
}
