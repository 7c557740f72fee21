//! CPU time of processes, read from `/proc` (Linux): what a load costs the
//! nodes, and what it costs the client that makes it. On a small machine a
//! heavy client takes the cores the nodes need, so both are reported.

/// CPU time (user and system, every thread) process `pid` has used so far,
/// in seconds; `None` where `/proc` cannot tell.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// [`cpu_seconds`] of this process.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks: fields 14
/// and 15, counted after the command name, which is in parentheses and may
/// hold spaces.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_user_plus_system_ticks() {
        let stat = "4242 (kvnode (x) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 7 0 12345 999 100 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (kvnode) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(own_cpu_seconds().is_some());
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
